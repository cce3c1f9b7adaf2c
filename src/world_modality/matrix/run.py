"""Running a matrix: the run folder's layout, the steps (each done or to do from what the folder holds) and
the loop that does the missing ones. See `world_modality.matrix` for the layout and the config schema."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from world_modality.atomic_io import atomic_write_json, atomic_write_text, read_jsonl
from world_modality.matrix.config import CONFIG_FILE, MatrixConfig, generated_dataset, parse_config, train_defaults
from world_modality.report.readcheck import ablation_change, ablation_line, gate_line, intervention_path, load_gate_run

EPISODES_FILE = "episodes.jsonl"
# Settings a rerun may change: they do not change any result (``name@section`` limits one to a section).
FREE_FIELDS = frozenset({"workers", "groups", "videos_per_task", "device", "progress", "wandb", "log_every", "save_every",
                         "val_batch_size", "batch_size@encoders", "chunk_episodes"})


# --- the run folder and its steps ------------------------------------------------------------------------


def dataset_dir(config: MatrixConfig, run_dir: Path) -> Path:
    return Path(config.dataset["path"]) if "path" in config.dataset else run_dir / "dataset"


def latents_dir(config: MatrixConfig, run_dir: Path, encoder: str | None = None) -> Path:
    """The latent cache of ``encoder`` (default: the first listed)."""
    return run_dir / "latents" / (encoder or next(iter(config.encoders)))


def train_dir(run_dir: Path, arm: str, seed: int) -> Path:
    return run_dir / "train" / arm / f"seed{seed}"


def eval_dir(run_dir: Path, label: str, seed: int) -> Path:
    return run_dir / "eval" / label / f"seed{seed}"


def generate_dataset(config: MatrixConfig, run_dir: Path) -> None:
    """Generate the simulator's expert dataset into RUN_DIR/dataset (resumable)."""
    from world_modality.sim import get_simulator

    name, options = generated_dataset(config.dataset)
    get_simulator(name).dataset_generator(dataset_dir(config, run_dir), **options)


def compute_world_latents(config: MatrixConfig, run_dir: Path, encoder: str) -> None:
    """Cache the world latents of the dataset into RUN_DIR/latents/<encoder> (resumable)."""
    from world_modality.latents import compute_latents

    compute_latents(dataset_dir(config, run_dir), encoder, out=latents_dir(config, run_dir, encoder),
                    **config.encoders[encoder])


def train_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """Train (or resume training) one arm with one seed into RUN_DIR/train/<arm>/seed<k>; say whether its
    world gate opened."""
    from world_modality.data.check import DatasetKeys
    from world_modality.training.trainer import TrainOptions, train

    options = dict(config.arms[arm])
    if "keys" in options:
        options["keys"] = DatasetKeys(**options["keys"])
    out = train_dir(run_dir, arm, seed)
    train(TrainOptions(dataset=str(dataset_dir(config, run_dir)), latents=str(latents_dir(config, run_dir, config.arm_encoders[arm])),
                       out=str(out), seed=seed, resume=True, **options))
    print(f"{arm} seed {seed}: {gate_line(load_gate_run(out))}")


def intervene_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """`wm intervene` of an arm's last checkpoint on its held-out episodes into RUN_DIR/intervene/<arm>/seed<k>.json."""
    from world_modality.devices import resolve_device
    from world_modality.training.intervene import format_table, intervene

    result = intervene(train_dir(run_dir, arm, seed), dataset_dir(config, run_dir),
                       latents_dir(config, run_dir, config.arm_encoders[arm]), list(config.interventions[arm]),
                       seed=seed, device=str(resolve_device(config.arms[arm].get("device", "auto"))),
                       keys=config.arms[arm].get("keys"))
    print(format_table(result))
    atomic_write_json(intervention_path(run_dir, arm, seed), result)


def evaluate_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int, memory_mode: str | None, label: str) -> None:
    """Evaluate the last checkpoint of an arm's seed (resumable) into RUN_DIR/eval/<label>/seed<k>; an ablation
    says whether it left every paired episode as the arm's own."""
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.training.checkpoint import last_checkpoint

    checkpoint = last_checkpoint(train_dir(run_dir, arm, seed))
    if checkpoint is None:
        raise RuntimeError(f"{train_dir(run_dir, arm, seed)} has no checkpoint to evaluate")
    ev = config.evaluation
    results = evaluate_checkpoint(
        checkpoint, env=ev.env, suite=ev.suite, tasks=ev.tasks, episodes_per_task=ev.episodes_per_task,
        memory_mode=memory_mode, arm=arm, train_seed=seed, out_dir=eval_dir(run_dir, label, seed), workers=ev.workers,
        groups=ev.groups, eval_seed=ev.eval_seed, videos_per_task=ev.videos_per_task, max_steps=ev.max_steps)
    if label != arm:
        own = read_jsonl(eval_dir(run_dir, arm, seed) / EPISODES_FILE)
        print(f"seed {seed}: {ablation_line(ablation_change(own, read_jsonl(results), label), arm)}")


def write_run_report(config: MatrixConfig, run_dir: Path) -> None:
    from world_modality.report import write_report

    write_report(run_dir, baseline=config.report.baseline)


@dataclass
class Step:
    """One unit of work of the matrix: its state on disk and how to do it."""

    stage: str  # dataset | latents | train | offline (wm intervene) | eval | report
    name: str
    done: bool
    detail: str
    run: Callable[[], None] = field(repr=False)


def _intervention_done(path: Path, modes: tuple[str, ...], step: int) -> bool:
    if not path.is_file():
        return False
    result = json.loads(path.read_text())
    return result.get("training_step") == step and set(modes) <= set(result.get("ratio_to_pred", {}))


def plan(config: MatrixConfig, run_dir: str | Path) -> list[Step]:
    """Every step of the matrix in order, each marked done or to do from what RUN_DIR holds."""
    from lerobot_policy_world_modality.latent_cache import SPEC_FILE

    from world_modality.sim import get_simulator
    from world_modality.training.checkpoint import last_checkpoint

    run_dir = Path(run_dir).expanduser().resolve()
    steps: list[Step] = []
    data = dataset_dir(config, run_dir)
    generated = generated_dataset(config.dataset)
    if generated is not None:
        name, options = generated
        what = ", ".join(f"{key} {value}" for key, value in options.items() if key in ("tasks", "episodes_per_task"))
        steps.append(Step("dataset", name, get_simulator(name).dataset_complete(data), f"{what} -> {data}",
                          lambda: generate_dataset(config, run_dir)))
    for encoder in config.encoders:
        latents = latents_dir(config, run_dir, encoder)
        steps.append(Step("latents", encoder, (latents / SPEC_FILE).is_file(), f"-> {latents}",
                          lambda encoder=encoder: compute_world_latents(config, run_dir, encoder)))
    for arm, options in config.arms.items():
        total = options.get("steps", train_defaults()["steps"])
        for seed in config.seeds:
            last = last_checkpoint(train_dir(run_dir, arm, seed))
            at = int(last.name) if last is not None else 0
            if at > total:
                raise ValueError(f"{train_dir(run_dir, arm, seed)} was trained to step {at}, beyond the {total} "
                                 f"steps the config asks of arm {arm!r}; use another run folder")
            kind = options.get("policy_type", "world_transformer")
            if kind == "world_transformer":
                kind = f"model {options.get('model_type') or 'F'}"
            if len(config.encoders) > 1:
                kind += f" on {config.arm_encoders[arm]} latents"
            detail = f"{kind}, step {at} of {total}"
            steps.append(Step("train", f"{arm} seed {seed}", at == total, detail + (" (resume)" if 0 < at < total else ""),
                              lambda arm=arm, seed=seed: train_arm(config, run_dir, arm, seed)))
    for arm, modes in config.interventions.items():
        total = config.arms[arm].get("steps", train_defaults()["steps"])
        for seed in config.seeds:
            path = intervention_path(run_dir, arm, seed)
            steps.append(Step("offline", f"{arm} seed {seed}", _intervention_done(path, modes, total),
                              f"wm intervene: validation loss under {', '.join(modes)} vs pred -> {path}",
                              lambda arm=arm, seed=seed: intervene_arm(config, run_dir, arm, seed)))
    ev = config.evaluation
    expected = len(ev.tasks) * ev.episodes_per_task
    for arm, mode, label in config.evaluations():
        for seed in config.seeds:
            have = len({r.get("episode_id") for r in read_jsonl(eval_dir(run_dir, label, seed) / EPISODES_FILE)})
            detail = (f"memory {mode or config.rollout_mode(arm) or 'none'}, {have} of {expected} episodes "
                      f"({len(ev.tasks)} task(s) x {ev.episodes_per_task}, eval_seed {ev.eval_seed})")
            steps.append(Step("eval", f"{label} seed {seed}", have >= expected, detail,
                              lambda arm=arm, seed=seed, mode=mode, label=label:
                              evaluate_arm(config, run_dir, arm, seed, mode, label)))
    steps.append(Step("report", "report", False, f"-> {run_dir / 'report' / 'report.md'}",
                      lambda: write_run_report(config, run_dir)))
    return steps


def format_plan(steps: list[Step]) -> str:
    todo = sum(not s.done for s in steps)
    lines = [f"{len(steps)} steps: {len(steps) - todo} done, {todo} to do"]
    lines += [f"  [{'done' if s.done else 'todo'}] {s.stage:8s} {s.name:24s} {s.detail}" for s in steps]
    return "\n".join(lines)


def check_run_dir(config: MatrixConfig, run_dir: Path) -> None:
    """Refuse a run folder whose matrix.yaml disagrees with ``config`` on anything that changes results."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    old, new = parse_config(yaml.safe_load(path.read_text())), config
    diffs = _diff(old.dataset, new.dataset, "dataset") + _diff(old.to_dict()["evaluation"], new.to_dict()["evaluation"],
                                                                "evaluation")
    for encoder in old.encoders.keys() & new.encoders.keys():
        diffs += _diff(old.encoders[encoder], new.encoders[encoder], f"encoders.{encoder}")
    old_arms, new_arms = old.to_dict()["arms"], new.to_dict()["arms"]
    for arm in old_arms.keys() & new_arms.keys():
        diffs += _diff(old_arms[arm], new_arms[arm], f"arms.{arm}")
    if diffs:
        raise ValueError(f"{run_dir} holds a matrix run with a different config ({path}):\n  " + "\n  ".join(diffs)
                         + "\nUse another --out, or restore those settings.")


def _diff(old: Any, new: Any, where: str) -> list[str]:
    leaf = where.rsplit(".", 1)[-1]
    if leaf in FREE_FIELDS or f"{leaf}@{where.split('.', 1)[0]}" in FREE_FIELDS:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys(), key=str) for d in _diff(old.get(k), new.get(k), f"{where}.{k}")]
    return [] if old == new else [f"{where}: existing {old!r} vs requested {new!r}"]


def run_matrix(config: MatrixConfig, run_dir: str | Path, dry_run: bool = False) -> list[Step]:
    """Run every missing step of the matrix into ``run_dir`` (or, with ``dry_run``, only plan them).

    Returns the plan as it stood before running; the report is always rewritten.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    check_run_dir(config, run_dir)
    steps = plan(config, run_dir)
    print(format_plan(steps))
    if dry_run:
        return steps
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    todo = [s for s in steps if not s.done]
    for i, step in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {step.stage} {step.name}: {step.detail}", flush=True)
        start = time.monotonic()
        step.run()
        print(f"[{i}/{len(todo)}] {step.stage} {step.name}: done in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    return steps
