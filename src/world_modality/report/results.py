"""Loading a run folder's results: the per-episode records of every evaluation, each arm's facts from its checkpoint's
config, its training curves and the read-check's evidence (gates, offline interventions, rollout ablations)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.families import FAMILY_OF_TYPE, policy_family
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES
from world_modality.report.arms import ArmFacts, ArmKind, arm_kind, training_memory
from world_modality.report.readcheck import (
    GATE_TAG,
    OfflineGap,
    ReadCheck,
    ablation_change,
    intervention_path,
    load_gate_run,
    read_scalars,
)
from world_modality.shards import has_results, load_episode_results

REQUIRED_FIELDS = ("arm", "episode_id", "success", "task", "train_seed")
# Result files without a recorded memory mode (written before the runner recorded it): E0 was the baseline and
# E1 the capacity control by convention; any other arm is taken as a world-memory arm.
LEGACY_KINDS = {"E0": ArmKind.BASELINE, "E1": ArmKind.CONTROL}
# The training curves the report plots (and an export keeps, `world_modality.matrix.export`).
LOSS_TAGS = ("train/loss", "train/action_loss", "val/action_loss")


@dataclass
class Results:
    """Every episode record of a run, with its evaluation labels in report order."""

    records: list[dict[str, Any]]
    labels: list[str]
    base: dict[str, str]  # label -> base arm
    mode: dict[str, str | None]  # label -> rollout memory mode (None: the checkpoint's own, or no memory)
    videos: list[tuple[str, str, Path]]  # (label, caption, video file)


def load_results(run_dir: str | Path) -> Results:
    """Read the results of every ``eval/*/seed*/`` folder of ``run_dir`` (shards merged); a record lacking a
    field is an error."""
    run_dir = Path(run_dir)
    folders = sorted(p for p in (run_dir / "eval").glob("*/seed*") if p.is_dir() and has_results(p))
    records: list[dict[str, Any]] = []
    base: dict[str, str] = {}
    mode: dict[str, str | None] = {}
    videos: list[tuple[str, str, Path]] = []
    for folder in folders:
        for i, r in enumerate(load_episode_results(folder), 1):
            missing = [k for k in REQUIRED_FIELDS if k not in r]
            if missing:
                raise InputError(f"{folder} episode record {i} lacks field(s) {missing}")
            label = r["arm"]
            if label != folder.parent.name:
                raise InputError(
                    f"{folder} episode record {i} holds a result of arm {label!r}, but its folder is the "
                    f"evaluation {folder.parent.name!r}: two evaluations would be mixed up"
                )
            base.setdefault(label, r.get("base_arm") or label.split(":")[0])
            mode.setdefault(label, r.get("memory_mode"))
            records.append(r)
            if r.get("video"):
                caption = f"{r['task']} seed {r.get('seed')} layout {r.get('layout')} (train seed {r['train_seed']})"
                videos.append((label, caption, folder / r["video"]))
    if not records:
        raise MissingFileError(f"no episode results under {run_dir / 'eval'} (expected <label>/seed<k>/episodes.jsonl)")

    def order(label: str) -> tuple[list[Any], int]:
        own = label == base[label]
        return natural_order(base[label]), -1 if own else _mode_rank(mode[label])

    return Results(records, sorted(base, key=order), base, mode, videos)


def natural_order(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _mode_rank(mode: str | None) -> int:
    return ROLLOUT_MODES.index(mode) if mode in ROLLOUT_MODES else len(ROLLOUT_MODES)


def own_records(res: Results, label: str) -> list[dict[str, Any]]:
    return [r for r in res.records if r["arm"] == label]


def train_seeds(res: Results, arm: str) -> list[Any]:
    return sorted({r["train_seed"] for r in own_records(res, arm)}, key=lambda s: natural_order(str(s)))


def _checkpoint_config(run_dir: Path, res: Results, arm: str) -> dict[str, Any] | None:
    """The policy config of one of the arm's checkpoints: the run folder's training run, else the checkpoint
    its records name; None when neither is there."""
    from world_modality.training.checkpoint import resolve_pretrained

    candidates = [run_dir / "train" / arm / f"seed{s}" for s in train_seeds(res, arm)]
    candidates += [Path(p) for p in dict.fromkeys(r.get("checkpoint") for r in own_records(res, arm)) if p]
    for candidate in candidates:
        try:
            return json.loads((resolve_pretrained(candidate) / "config.json").read_text())
        except FileNotFoundError:
            continue
    return None


def arm_facts(run_dir: Path, res: Results) -> dict[str, ArmFacts]:
    """Each arm's kind (from the memory mode its own evaluation recorded), world source and training memory
    (from its checkpoint's config, when found)."""
    out = {}
    for arm in [label for label in res.labels if label == res.base[label]]:
        mode = res.mode[arm]
        kind = arm_kind(mode) if mode is not None else LEGACY_KINDS.get(arm, ArmKind.WORLD)
        config = _checkpoint_config(run_dir, res, arm) or {}
        source = (config.get("encoder_spec") or {}).get("name")
        memory = (
            training_memory(config["memory_source"], config["world_memory_mode_train"])
            if kind is not ArmKind.BASELINE and "memory_source" in config
            else None
        )
        family = policy_family(config["type"], config) if config.get("type") in FAMILY_OF_TYPE else None
        out[arm] = ArmFacts(arm, kind, source, memory, family)
    return out


Curves = dict[str, dict[str, tuple[list[int], list[float]]]]


def training_scalars(run_dir: Path) -> Curves:
    """``"<arm> seed <k>" -> tag -> (steps, values)`` for the plotted tags of every training run."""
    curves: Curves = {}
    for tb in sorted((run_dir / "train").glob("*/seed*/tensorboard"), key=lambda p: natural_order(str(p))):
        run = f"{tb.parent.parent.name} {tb.parent.name.replace('seed', 'seed ')}"
        curves[run] = read_scalars(tb, (*LOSS_TAGS, GATE_TAG))
    return curves


def read_check(run_dir: Path, res: Results, arm: str, curves: Curves) -> ReadCheck:
    """The read-check of a world-memory arm from the run folder: per training seed its gate and offline
    intervention, and every rollout ablation against its own evaluation."""
    gate, offline = {}, {}
    for seed in train_seeds(res, arm):
        train_run = run_dir / "train" / arm / f"seed{seed}"
        trajectory = curves.get(f"{arm} seed {seed}", {}).get(GATE_TAG, ([], []))
        gate[seed] = load_gate_run(train_run, trajectory) if train_run.is_dir() else None
        path = intervention_path(run_dir, arm, seed)
        offline[seed] = OfflineGap.load(path) if path.is_file() else None
    own = own_records(res, arm)
    ablations = [
        ablation_change(own, own_records(res, label), label)
        for label in res.labels
        if res.base[label] == arm and label != arm
    ]
    return ReadCheck(arm, gate, ablations, offline)
