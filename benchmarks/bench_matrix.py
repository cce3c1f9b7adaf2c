"""A matrix run's stage times, and the time of a bigger matrix projected from them.

Usage: python benchmarks/bench_matrix.py RUN_DIR [--target MATRIX.yaml] [--json out.json]

Reads RUN_DIR/profile.json (each step's wall-clock start and end, written by `wm matrix`) and RUN_DIR/matrix.yaml,
and prints per stage: its steps, their summed wall time (busy), first start to last end (span), the work done
and the measured rate (seconds per dataset episode, per training step, per evaluation episode; per step for
interventions and the report). With ``--target``, the target matrix's plan (every step to do) is priced at those
rates.

Assumption of the projection: every stage's time grows linearly with its work: dataset and latents with the
dataset's episodes, each training with its steps (at the rate measured for an arm of the same policy type and
model, else the mean of all trainings), evaluations with their episodes (the measured per-episode figure, which
spreads the first evaluation's simulator start-up over the measured episodes: a conservative figure for a bigger
matrix, whose later evaluations reuse the started pool), interventions per step, the report fixed. The machine,
batch sizes, workers and groups must be those of the measured run. Two totals: ``serial`` (one step after another)
and ``concurrent`` (dataset + latents + the longer of training and evaluation + interventions + report: the local
executor evaluating finished checkpoints while the GPU trains; a lower bound, as the last training's evaluations
run after it).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from world_modality.atomic_io import atomic_write_json
from world_modality.matrix import load_config, load_profile, plan, stage_times
from world_modality.matrix.config import MatrixConfig
from world_modality.matrix.profile import format_stage_times

UNIT = {"dataset": "episodes", "latents": "episodes", "train": "steps", "eval": "episodes"}  # else: per step


def _model(config: MatrixConfig, arm: str) -> str:
    """What sets an arm's training step time: its policy type and, for the world transformer, its model."""
    spec = config.arms[arm]
    return "/".join(filter(None, (spec.policy_type, spec.model_type)))


def _work(stage: str, step_work: dict[str, int]) -> float:
    return float(step_work.get(UNIT[stage], 0)) if stage in UNIT else 1.0


def measured_rates(run_dir: Path) -> dict[str, Any]:
    """Seconds per unit of work per stage (``train`` also per model) from a run folder's profile."""
    config = load_config(run_dir / "matrix.yaml")
    steps = {s.name: s for s in plan(config, run_dir, gpus=False).steps}
    seconds, work = defaultdict(float), defaultdict(float)
    for name, record in load_profile(run_dir).items():
        stage = record["stage"]
        amount = _work(stage, record["work"])
        if amount <= 0:  # a resumed step that had nothing left: no rate to learn from
            continue
        seconds[stage] += record["wall_s"]
        work[stage] += amount
        if stage == "train" and name in steps:
            key = f"train {_model(config, steps[name].kwargs['arm'])}"
            seconds[key] += record["wall_s"]
            work[key] += amount
    return {key: seconds[key] / work[key] for key in seconds}


def project(rates: dict[str, float], target: MatrixConfig) -> dict[str, Any]:
    """The target matrix's work per stage priced at ``rates``, and its serial and concurrent totals."""
    with tempfile.TemporaryDirectory() as empty:  # an empty run folder: every step to do
        steps = plan(target, Path(empty), gpus=False).steps
    stages: dict[str, dict[str, float]] = {}
    for step in steps:
        rate_key = f"train {_model(target, step.kwargs['arm'])}" if step.stage == "train" else step.stage
        rate = rates.get(rate_key, rates.get(step.stage))
        if rate is None:
            raise ValueError(f"the measured run has no {step.stage!r} step to take a rate from ({step.name})")
        row = stages.setdefault(step.stage, {"steps": 0, "work": 0.0, "seconds": 0.0})
        amount = _work(step.stage, dict(step.work))
        row["steps"] += 1
        row["work"] += amount
        row["seconds"] += amount * rate
    s = {stage: row["seconds"] for stage, row in stages.items()}
    serial = sum(s.values())
    concurrent = (
        s.get("dataset", 0)
        + s.get("latents", 0)
        + max(s.get("train", 0), s.get("eval", 0))
        + s.get("offline", 0)
        + s.get("report", 0)
    )
    return {"stages": stages, "serial_s": serial, "concurrent_s": concurrent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--target", type=Path, default=None, help="a matrix file to project the time of")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    profile = load_profile(args.run_dir)
    if not profile:
        raise SystemExit(f"{args.run_dir} has no profile.json: run `wm matrix` into it first")
    rows = stage_times(profile.values())
    rates = measured_rates(args.run_dir)
    print(format_stage_times(rows))
    print(
        "rates: " + ", ".join(f"{key} {rate:.3g} s/{UNIT.get(key.split()[0], 'step')}" for key, rate in rates.items())
    )
    result: dict[str, Any] = {"run_dir": str(args.run_dir.resolve()), "stages": rows, "rates": rates}
    if args.target is not None:
        projection = project(rates, load_config(args.target))
        print(f"projected for {args.target} (linear in work; see --help):")
        for stage, row in projection["stages"].items():
            print(
                f"  {stage:10s} {row['steps']:5d} steps {row['work']:10.0f} {UNIT.get(stage, 'steps'):9s} "
                f"{row['seconds'] / 60:8.1f} min"
            )
        print(
            f"  total: serial {projection['serial_s'] / 3600:.2f} h, concurrent (lower bound) "
            f"{projection['concurrent_s'] / 3600:.2f} h"
        )
        result["projection"] = {"target": str(args.target), **projection}
    if args.json is not None:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
