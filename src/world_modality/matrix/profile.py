"""A matrix run's stage times: RUN_DIR/profile.json holds, for every step that has run, its last wall-clock start
and end, the work it did (episodes, training steps) and the executor that ran it; `stage_times` sums them per
stage (benchmarks/bench_matrix.py projects a bigger matrix from them)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from world_modality.atomic_io import atomic_write_json
from world_modality.schedule import Step

PROFILE_FILE = "profile.json"


def load_profile(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Step name -> its record (stage, start, end, wall_s, work, executor, detail); empty before any step ran."""
    path = Path(run_dir) / PROFILE_FILE
    return json.loads(path.read_text())["steps"] if path.is_file() else {}


class Profile:
    """Records each finished step into RUN_DIR/profile.json (rewritten atomically: an interrupted run keeps
    the times of the steps it finished; a step run again replaces its record)."""

    def __init__(self, run_dir: Path, executor: str):
        self.path = Path(run_dir) / PROFILE_FILE
        self.executor = executor
        self.steps = load_profile(run_dir)
        self.this_run: list[dict[str, Any]] = []

    def record(self, step: Step, start: float, end: float) -> None:
        record = {
            "name": step.name,
            "stage": step.stage,
            "start": start,
            "end": end,
            "wall_s": end - start,
            "work": dict(step.work),
            "executor": self.executor,
            "detail": step.detail,
        }
        self.steps[step.name] = record
        self.this_run.append(record)
        atomic_write_json(self.path, {"steps": self.steps})


def stage_times(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage, in the order the stages began: its steps, their summed wall time (``busy_s``), the wall time
    from its first start to its last end (``span_s``; less than ``busy_s`` where steps ran side by side) and
    the work done (summed units)."""
    stages: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r["start"]):
        row = stages.setdefault(
            r["stage"],
            {"stage": r["stage"], "steps": 0, "busy_s": 0.0, "start": r["start"], "end": r["end"], "work": {}},
        )
        row["steps"] += 1
        row["busy_s"] += r["wall_s"]
        row["end"] = max(row["end"], r["end"])
        for unit, amount in r.get("work", {}).items():
            row["work"][unit] = row["work"].get(unit, 0) + amount
    for row in stages.values():
        row["span_s"] = row.pop("end") - row.pop("start")
    return list(stages.values())


def format_stage_times(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "stage times: no step ran"
    lines = [
        "stage times (busy: the steps' summed wall time; span: first start to last end):",
        f"  {'stage':10s} {'steps':>5s} {'busy':>10s} {'span':>10s}  work",
    ]
    for row in rows:
        work = ", ".join(f"{amount} {unit}" for unit, amount in row["work"].items())
        lines.append(f"  {row['stage']:10s} {row['steps']:5d} {row['busy_s']:9.1f}s {row['span_s']:9.1f}s  {work}")
    return "\n".join(lines)
