"""The experiment matrix (docs/ARCHITECTURE.md, Experiment matrix): one declarative YAML file -> a dataset, world latents, every
arm x training seed trained, every evaluation run on the same episode list, and the report. Only what is
missing runs: finished steps are skipped, an interrupted training resumes from its last checkpoint and an
interrupted evaluation from its episodes file.

Run folder::

    RUN_DIR/matrix.yaml                          the resolved config; a rerun must agree with it
    RUN_DIR/dataset/                             the generated MetaWorld dataset (absent with dataset.path)
    RUN_DIR/latents/<encoder>/                   the world-latent cache (a trained/fitted encoder beside it)
    RUN_DIR/train/<arm>/seed<k>/                 a `wm train` run folder (checkpoints/, tensorboard/)
    RUN_DIR/eval/<label>/seed<k>/episodes.jsonl  one JSON line per episode (+ videos/); the label is the arm
                                                 (its own rollout memory mode) or <arm>:<mode> (an ablation)
    RUN_DIR/report/                              report.md, CSV tables and PNG plots (`wm report`)

Config schema (YAML; ``[required]`` marks the only fields without a default)::

    dataset:                     # [required] exactly one of `path` and `metaworld`
      path: DIR                  # an existing LeRobot dataset, used as it is
      metaworld:                 # or MetaWorld expert demos generated into RUN_DIR/dataset
        tasks: reach-v3,push-v3  # [required] names, MT10, MT50 or a group; a string or a list
        episodes_per_task: 5     # [required]
        cameras: [corner2]       # and image_size (128), seed (0), render_quality (fast),
                                 # storage (image), workers (1): generate_metaworld_dataset's options
    encoder:                     # [required]
      name: learned              # [required] state | learned | dinov2 | vjepa2
      learned_steps: 1500        # any other keyword of compute_latents: encoder_path, camera_key,
                                 # temporal_window, batch_size, device, seed, learned_options, ...
    training:                    # defaults for every arm
      seeds: [0, 1, 2]           # training seeds (default [0])
      steps: 1000                # any TrainOptions or policy-config field, as in `arms`
      batch_size: 64
    arms:                        # [required] name -> TrainOptions fields (model_type, steps, batch_size,
      E0: {model_type: A}        # save_every, val_fraction, device, keys, policy, ...); policy-config fields
      E1: {model_type: F, world_memory_mode_train: zero, world_memory_mode_rollout: zero}
      E2: {model_type: F}        # (WorldTransformerConfig) may also be given directly: they go into `policy`
    ablations:                   # arm -> rollout memory modes evaluated besides the arm's own
      E2: [zero, random, shuffle]  # pred | zero | random | signflip | shuffle | oracle (model F arms)
    evaluation:
      env: metaworld             # or libero (then suite: libero_spatial | libero_object | libero_goal |
                                 # libero_10 | libero_90, episodes = init states 0..N-1 of each task)
      tasks: null                # default: the dataset's tasks (LIBERO: the suite's tasks the policy knows)
      episodes_per_task: 10
      eval_seed: 1000            # every arm and ablation runs the same episode list
      workers: 2
      groups: 1                  # pipelined lockstep groups of the workers (wm eval --groups)
      videos_per_task: 0
      max_steps: null            # default: the simulator's episode limit

The matrix owns TrainOptions' dataset, latents, out, seed and resume. Rerunning with a changed dataset,
encoder, evaluation episode list or options of an existing arm is an error (use another run folder);
adding arms, seeds or ablations, or changing workers, groups, devices or video counts, is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from world_modality.atomic_io import atomic_write_text, read_jsonl
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES

CONFIG_FILE = "matrix.yaml"
EPISODES_FILE = "episodes.jsonl"
SUPPORTED_ENVS = ("metaworld", "libero")
SECTIONS = ("dataset", "encoder", "training", "arms", "ablations", "evaluation")
# TrainOptions fields the matrix sets itself, and policy-config fields `build_config` fills from the data.
MATRIX_OWNED = ("dataset", "latents", "out", "seed", "resume")
POLICY_FROM_DATA = ("model_type", "instructions", "latent_dim", "encoder_spec", "state_key", "action_key",
                    "instruction_key", "image_key", "input_features", "output_features", "device",
                    "scheduler_decay_steps", "codebook_size")
EVAL_DEFAULTS: dict[str, Any] = {"env": "metaworld", "suite": None, "tasks": None, "episodes_per_task": 10, "eval_seed": 1000,
                                 "workers": 2, "groups": 1, "videos_per_task": 0, "max_steps": None}
# Settings a rerun may change: they do not change any result.
FREE_FIELDS = frozenset({"workers", "groups", "videos_per_task", "device", "progress", "wandb", "log_every", "save_every",
                         "val_batch_size", "batch_size@encoder", "chunk_episodes"})


class MatrixConfigError(ValueError):
    """An invalid matrix config; the message names the field."""


@dataclass
class MatrixConfig:
    """A validated matrix config (build one with `parse_config` or `load_config`)."""

    dataset: dict[str, Any]  # {"path": str} or {"metaworld": generate_metaworld_dataset keywords}
    encoder: dict[str, Any]  # {"name": ..., other compute_latents keywords}
    seeds: tuple[int, ...]
    arms: dict[str, dict[str, Any]]  # arm -> TrainOptions keywords (policy overrides under "policy")
    ablations: dict[str, tuple[str, ...]]
    evaluation: dict[str, Any]  # EVAL_DEFAULTS' keys; tasks resolved to a list

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data; `parse_config` of it gives an equal config."""
        return {
            "dataset": self.dataset,
            "encoder": self.encoder,
            "training": {"seeds": list(self.seeds)},
            "arms": self.arms,
            "ablations": {arm: list(modes) for arm, modes in self.ablations.items()},
            "evaluation": self.evaluation,
        }

    def rollout_mode(self, arm: str) -> str | None:
        """The arm's own rollout memory mode (None without world memory)."""
        options = self.arms[arm]
        policy_type = options.get("policy_type", _train_defaults()["policy_type"])
        if policy_type == "world_transformer" and (options.get("model_type") or "F") != "F":
            return None
        defaults = _policy_defaults(policy_type)
        return options.get("policy", {}).get("world_memory_mode_rollout", defaults["world_memory_mode_rollout"])

    def evaluations(self) -> list[tuple[str, str | None, str]]:
        """(arm, memory_mode, label) of every evaluation: the arm's own mode (None), then its ablations."""
        out: list[tuple[str, str | None, str]] = []
        for arm in self.arms:
            out.append((arm, None, arm))
            own = self.rollout_mode(arm)
            out += [(arm, mode, f"{arm}:{mode}") for mode in self.ablations.get(arm, ()) if mode != own]
        return out


# --- validation ------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> MatrixConfig:
    """Read and validate a YAML matrix config."""
    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MatrixConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_config(raw, base_dir=path.parent)


def parse_config(raw: Any, base_dir: Path | None = None) -> MatrixConfig:
    """Validate a config mapping (see the module docstring); relative dataset paths are taken from ``base_dir``."""
    top = _mapping(raw, "config")
    _known(top, SECTIONS, "config")
    for name in ("dataset", "encoder", "arms"):
        if name not in top:
            raise MatrixConfigError(f"config: missing section {name!r} (sections: {', '.join(SECTIONS)})")
    dataset = _dataset(_mapping(top["dataset"], "dataset"), base_dir)
    encoder = _encoder(_mapping(top["encoder"], "encoder"))
    training = dict(_mapping(top.get("training") or {}, "training"))
    seeds = _seeds(training.pop("seeds", [0]))
    defaults = _train_fields(training, "training")
    arms_raw = _mapping(top["arms"], "arms")
    if not arms_raw:
        raise MatrixConfigError("arms: name at least one arm, e.g. E0: {model_type: A}")
    arms = {}
    for name, options in arms_raw.items():
        if not isinstance(name, str) or not name or ":" in name or "/" in name:
            raise MatrixConfigError(f"arms: arm names must be non-empty strings without ':' or '/', got {name!r}")
        arm = _train_fields(_mapping(options or {}, f"arms.{name}"), f"arms.{name}")
        policy = {**defaults.get("policy", {}), **arm.get("policy", {})}
        arms[name] = {**defaults, **arm} | ({"policy": policy} if policy else {})
    config = MatrixConfig(dataset, encoder, seeds, arms, {}, {})
    config.ablations = _ablations(_mapping(top.get("ablations") or {}, "ablations"), config)
    config.evaluation = _evaluation(_mapping(top.get("evaluation") or {}, "evaluation"), dataset)
    return config


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MatrixConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _known(given: Mapping[str, Any], valid: Collection[str], where: str) -> None:
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise MatrixConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {', '.join(valid)}")


def _check_type(where: str, value: Any, default: Any) -> None:
    """``value`` must have the type of the field's default (None defaults accept anything)."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
        ((list, tuple), "a list"), (Mapping, "a mapping"),
    ]
    for kind, name in kinds:
        if isinstance(default, kind):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
                  else isinstance(value, int) and not isinstance(value, bool) if kind is int
                  else isinstance(value, kind))
            if not ok:
                raise MatrixConfigError(f"{where}: expected {name}, got {value!r}")
            return


def _keyword_defaults(fn: Callable[..., Any], exclude: tuple[str, ...]) -> dict[str, Any]:
    return {name: None if p.default is inspect.Parameter.empty else p.default
            for name, p in inspect.signature(fn).parameters.items() if name not in exclude}


def _dataset(section: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    _known(section, ("path", "metaworld"), "dataset")
    if len(section) != 1:
        raise MatrixConfigError("dataset: give exactly one of 'path' (an existing dataset) and 'metaworld' (generate one)")
    if "path" in section:
        if not isinstance(section["path"], (str, Path)):
            raise MatrixConfigError(f"dataset.path: expected a folder path, got {section['path']!r}")
        path = Path(section["path"]).expanduser()
        path = (base_dir / path if base_dir and not path.is_absolute() else path).resolve()
        if not (path / "meta" / "info.json").is_file():
            raise MatrixConfigError(f"dataset.path: {path} is not a LeRobot dataset (no meta/info.json)")
        return {"path": str(path)}
    from world_modality.data.metaworld_gen import generate_metaworld_dataset
    from world_modality.sim.metaworld_tasks import resolve_tasks

    options = dict(_mapping(section["metaworld"], "dataset.metaworld"))
    valid = _keyword_defaults(generate_metaworld_dataset, ("out", "overwrite"))
    _known(options, valid, "dataset.metaworld")
    for name in ("tasks", "episodes_per_task"):
        if name not in options:
            raise MatrixConfigError(f"dataset.metaworld: missing field {name!r}")
    for name, value in options.items():
        _check_type(f"dataset.metaworld.{name}", value, 1 if name == "episodes_per_task" else valid[name])
    options["tasks"] = _tasks(options["tasks"], "dataset.metaworld.tasks", resolve_tasks)
    if "cameras" in options:
        options["cameras"] = list(options["cameras"])
    return {"metaworld": options}


def _tasks(value: Any, where: str, resolve: Callable[[Any], list[str]]) -> list[str]:
    if not isinstance(value, (str, list)):
        raise MatrixConfigError(f"{where}: expected task names (a string or a list), got {value!r}")
    try:
        return resolve(value)
    except ValueError as e:
        raise MatrixConfigError(f"{where}: {e}") from None


def _encoder(section: Mapping[str, Any]) -> dict[str, Any]:
    from world_modality.commands.latents import ENCODER_CHOICES
    from world_modality.latents import compute_latents

    valid = {"name": None} | _keyword_defaults(compute_latents, ("dataset", "encoder_name", "out", "progress"))
    _known(section, valid, "encoder")
    if section.get("name") not in ENCODER_CHOICES:
        raise MatrixConfigError(f"encoder.name: expected one of {', '.join(ENCODER_CHOICES)}, got {section.get('name')!r}")
    for name, value in section.items():
        _check_type(f"encoder.{name}", value, valid[name])
    return dict(section)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in value)):
        raise MatrixConfigError(f"training.seeds: expected a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise MatrixConfigError(f"training.seeds: repeated seed in {value}")
    return tuple(value)


@cache
def _train_defaults() -> dict[str, Any]:
    from world_modality.training.trainer import TrainOptions

    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(TrainOptions) if f.name not in MATRIX_OWNED}


@cache
def _policy_defaults(policy_type: str) -> dict[str, Any]:
    """The policy family's own config fields with their defaults (not LeRobot's base-class ones)."""
    from lerobot.configs import PreTrainedConfig

    from world_modality.training.trainer import policy_config_class

    config_class = policy_config_class(policy_type)
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(config_class) if f.name not in base and f.name not in POLICY_FROM_DATA}


def _train_fields(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TrainOptions keywords from an arm (or the training defaults); policy-config fields go into ``policy``."""
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
        MODEL_TYPES,
    )

    from world_modality.data.check import DatasetKeys

    train = _train_defaults()
    policy_type = options.get("policy_type", train["policy_type"])
    from world_modality.training.trainer import POLICY_TYPES

    if policy_type not in POLICY_TYPES:
        raise MatrixConfigError(f"{where}.policy_type: expected one of {', '.join(POLICY_TYPES)}, got {policy_type!r}")
    policy_fields = _policy_defaults(policy_type)
    unknown = [k for k in options if k not in train and k not in policy_fields]
    if unknown:
        raise MatrixConfigError(
            f"{where}: unknown field(s) {unknown}; valid: TrainOptions fields {', '.join(train)} "
            f"(the matrix sets {', '.join(MATRIX_OWNED)}), and policy config fields {', '.join(policy_fields)}"
        )
    out: dict[str, Any] = {}
    policy = dict(_mapping(options.get("policy") or {}, f"{where}.policy"))
    _known(policy, policy_fields, f"{where}.policy")
    for name, value in options.items():
        if name in train and name != "policy":
            if name == "keys":
                keys = _mapping(value, f"{where}.keys")
                _known(keys, [f.name for f in dataclasses.fields(DatasetKeys)], f"{where}.keys")
                value = dict(keys)
            _check_type(f"{where}.{name}", value, train[name])
            out[name] = value
        elif name != "policy":
            policy[name] = value
    for name, value in policy.items():
        _check_type(f"{where}.policy.{name}", value, policy_fields[name])
    if "model_type" in out and out["model_type"] not in MODEL_TYPES:
        raise MatrixConfigError(f"{where}.model_type: expected one of {', '.join(MODEL_TYPES)}, got {out['model_type']!r}")
    if policy:
        out["policy"] = policy
    return out


def _ablations(section: Mapping[str, Any], config: MatrixConfig) -> dict[str, tuple[str, ...]]:
    out = {}
    for arm, modes in section.items():
        where = f"ablations.{arm}"
        if arm not in config.arms:
            raise MatrixConfigError(f"{where}: no arm {arm!r} (arms: {', '.join(config.arms)})")
        if config.rollout_mode(arm) is None:
            raise MatrixConfigError(f"{where}: arm {arm!r} has no world memory (model_type "
                                    f"{config.arms[arm].get('model_type')}); rollout ablations need model_type F")
        if not isinstance(modes, list) or any(m not in ROLLOUT_MODES for m in modes):
            raise MatrixConfigError(f"{where}: expected a list of memory modes from {', '.join(ROLLOUT_MODES)}, got {modes!r}")
        out[arm] = tuple(dict.fromkeys(modes))
    return out


def _evaluation(section: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    from world_modality.latents import SIDECAR
    from world_modality.sim.metaworld_tasks import resolve_tasks

    _known(section, EVAL_DEFAULTS, "evaluation")
    out = EVAL_DEFAULTS | dict(section)
    for name in ("episodes_per_task", "eval_seed", "workers", "groups", "videos_per_task"):
        low = 1 if name in ("episodes_per_task", "workers", "groups") else 0
        if not isinstance(out[name], int) or isinstance(out[name], bool) or out[name] < low:
            raise MatrixConfigError(f"evaluation.{name}: expected an integer >= {low}, got {out[name]!r}")
    if out["env"] not in SUPPORTED_ENVS:
        raise MatrixConfigError(f"evaluation.env: expected one of {', '.join(SUPPORTED_ENVS)}, got {out['env']!r}")
    if out["max_steps"] is not None and (not isinstance(out["max_steps"], int) or out["max_steps"] < 1):
        raise MatrixConfigError(f"evaluation.max_steps: expected null or an integer >= 1, got {out['max_steps']!r}")
    if out["env"] == "libero":
        from world_modality.sim.libero_setup import SUITES

        if out["suite"] not in SUITES:
            raise MatrixConfigError(f"evaluation.suite: env libero needs one of {', '.join(SUITES)}, got {out['suite']!r}")
        if out["tasks"] is not None:
            tasks = out["tasks"].split(",") if isinstance(out["tasks"], str) else out["tasks"]
            out["tasks"] = [str(t).strip() for t in tasks]
        return out
    if out["suite"] is not None:
        raise MatrixConfigError(f"evaluation.suite: only for env libero, got suite {out['suite']!r} with env {out['env']!r}")
    if out["tasks"] is None:
        if "metaworld" in dataset:
            out["tasks"] = list(dataset["metaworld"]["tasks"])
        else:
            sidecar = Path(dataset["path"]) / SIDECAR
            if not sidecar.is_file():
                raise MatrixConfigError(f"evaluation.tasks: required, since {dataset['path']} was not made by "
                                        "`wm data metaworld` (no task list in its meta/world_modality.json)")
            out["tasks"] = list(json.loads(sidecar.read_text())["spec"]["tasks"])
    else:
        out["tasks"] = _tasks(out["tasks"], "evaluation.tasks", resolve_tasks)
    return out


# --- the run folder and its steps ------------------------------------------------------------------------


def dataset_dir(config: MatrixConfig, run_dir: Path) -> Path:
    return Path(config.dataset["path"]) if "path" in config.dataset else run_dir / "dataset"


def latents_dir(config: MatrixConfig, run_dir: Path) -> Path:
    return run_dir / "latents" / config.encoder["name"]


def train_dir(run_dir: Path, arm: str, seed: int) -> Path:
    return run_dir / "train" / arm / f"seed{seed}"


def eval_dir(run_dir: Path, label: str, seed: int) -> Path:
    return run_dir / "eval" / label / f"seed{seed}"


def generate_dataset(config: MatrixConfig, run_dir: Path) -> None:
    """Generate the MetaWorld dataset into RUN_DIR/dataset (resumable)."""
    from world_modality.data.metaworld_gen import generate_metaworld_dataset

    generate_metaworld_dataset(dataset_dir(config, run_dir), **config.dataset["metaworld"])


def compute_world_latents(config: MatrixConfig, run_dir: Path) -> None:
    """Cache the world latents of the dataset into RUN_DIR/latents/<encoder> (resumable)."""
    from world_modality.latents import compute_latents

    options = {k: v for k, v in config.encoder.items() if k != "name"}
    compute_latents(dataset_dir(config, run_dir), config.encoder["name"], out=latents_dir(config, run_dir), **options)


def train_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """Train (or resume training) one arm with one seed into RUN_DIR/train/<arm>/seed<k>."""
    from world_modality.data.check import DatasetKeys
    from world_modality.training.trainer import TrainOptions, train

    options = dict(config.arms[arm])
    if "keys" in options:
        options["keys"] = DatasetKeys(**options["keys"])
    train(TrainOptions(dataset=str(dataset_dir(config, run_dir)), latents=str(latents_dir(config, run_dir)),
                       out=str(train_dir(run_dir, arm, seed)), seed=seed, resume=True, **options))


def evaluate_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int, memory_mode: str | None, label: str) -> None:
    """Evaluate the last checkpoint of an arm's seed (resumable) into RUN_DIR/eval/<label>/seed<k>."""
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.training.checkpoint import last_checkpoint

    checkpoint = last_checkpoint(train_dir(run_dir, arm, seed))
    if checkpoint is None:
        raise RuntimeError(f"{train_dir(run_dir, arm, seed)} has no checkpoint to evaluate")
    ev = config.evaluation
    evaluate_checkpoint(checkpoint, env=ev["env"], suite=ev["suite"], tasks=ev["tasks"], episodes_per_task=ev["episodes_per_task"],
                        memory_mode=memory_mode, arm=arm, train_seed=seed, out_dir=eval_dir(run_dir, label, seed),
                        workers=ev["workers"], groups=ev["groups"], eval_seed=ev["eval_seed"], videos_per_task=ev["videos_per_task"],
                        max_steps=ev["max_steps"])


def write_run_report(run_dir: Path) -> None:
    from world_modality.report import write_report

    write_report(run_dir)


@dataclass
class Step:
    """One unit of work of the matrix: its state on disk and how to do it."""

    stage: str  # dataset | latents | train | eval | report
    name: str
    done: bool
    detail: str
    run: Callable[[], None] = field(repr=False)


def plan(config: MatrixConfig, run_dir: str | Path) -> list[Step]:
    """Every step of the matrix in order, each marked done or to do from what RUN_DIR holds."""
    from world_modality.latents import SIDECAR
    from lerobot_policy_world_modality.latent_cache import SPEC_FILE
    from world_modality.training.checkpoint import last_checkpoint

    run_dir = Path(run_dir).expanduser().resolve()
    steps: list[Step] = []
    data = dataset_dir(config, run_dir)
    if "metaworld" in config.dataset:
        mw = config.dataset["metaworld"]
        steps.append(Step("dataset", "metaworld", (data / SIDECAR).is_file(),
                          f"{len(mw['tasks'])} task(s) x {mw['episodes_per_task']} expert episodes -> {data}",
                          lambda: generate_dataset(config, run_dir)))
    latents = latents_dir(config, run_dir)
    steps.append(Step("latents", config.encoder["name"], (latents / SPEC_FILE).is_file(), f"-> {latents}",
                      lambda: compute_world_latents(config, run_dir)))
    for arm, options in config.arms.items():
        total = options.get("steps", _train_defaults()["steps"])
        for seed in config.seeds:
            last = last_checkpoint(train_dir(run_dir, arm, seed))
            at = int(last.name) if last is not None else 0
            if at > total:
                raise ValueError(f"{train_dir(run_dir, arm, seed)} was trained to step {at}, beyond the {total} "
                                 f"steps the config asks of arm {arm!r}; use another run folder")
            kind = options.get("policy_type", "world_transformer")
            if kind == "world_transformer":
                kind = f"model {options.get('model_type') or 'F'}"
            detail = f"{kind}, step {at} of {total}"
            steps.append(Step("train", f"{arm} seed {seed}", at == total, detail + (" (resume)" if 0 < at < total else ""),
                              lambda arm=arm, seed=seed: train_arm(config, run_dir, arm, seed)))
    ev = config.evaluation
    expected = len(ev["tasks"]) * ev["episodes_per_task"]
    for arm, mode, label in config.evaluations():
        for seed in config.seeds:
            have = len({r.get("episode_id") for r in read_jsonl(eval_dir(run_dir, label, seed) / EPISODES_FILE)})
            detail = (f"memory {mode or config.rollout_mode(arm) or 'none'}, {have} of {expected} episodes "
                      f"({len(ev['tasks'])} task(s) x {ev['episodes_per_task']}, eval_seed {ev['eval_seed']})")
            steps.append(Step("eval", f"{label} seed {seed}", have >= expected, detail,
                              lambda arm=arm, seed=seed, mode=mode, label=label:
                              evaluate_arm(config, run_dir, arm, seed, mode, label)))
    steps.append(Step("report", "report", False, f"-> {run_dir / 'report' / 'report.md'}",
                      lambda: write_run_report(run_dir)))
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
    old, new = parse_config(yaml.safe_load(path.read_text())).to_dict(), config.to_dict()
    diffs = [d for name in ("dataset", "encoder", "evaluation") for d in _diff(old[name], new[name], name)]
    for arm in old["arms"].keys() & new["arms"].keys():
        diffs += _diff(old["arms"][arm], new["arms"][arm], f"arms.{arm}")
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
        step.run()
    return steps
