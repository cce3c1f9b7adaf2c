"""Self-describing checkpoints of every world-modality policy family (docs/ARCHITECTURE.md, Checkpoints), written atomically.

Layout of a run folder::

    RUN_DIR/checkpoints/<step:06d>/pretrained_model/   config.json (policy config: encoder spec, dataset
                                                       keys, instruction vocabulary, flow settings...),
                                                       model.safetensors, policy_{pre,post}processor*
                                                       (normalisation statistics), world_modality.json
                                                       (library versions, step, data provenance, split)
    RUN_DIR/checkpoints/<step:06d>/training_state/    training_state.pt (optimizer, scheduler, RNG)
    RUN_DIR/checkpoints/last -> <step:06d>

Each checkpoint is written into a temporary folder and renamed into place, and ``last`` is
replaced atomically, so an interruption at any moment leaves the previous checkpoint usable. Both sub-folders
record the size and sha256 of their files (``file_digests.json``), checked when they are loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from safetensors import SafetensorError

import lerobot_policy_world_modality  # noqa: F401  (registers the plugin's policy types with LeRobot)
from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.file_digests import verify_folder
from world_modality import __version__
from world_modality.atomic_io import (
    atomic_symlink,
    atomic_write_json,
    commit_folder,
    record_digests,
    temp_folder,
    writing,
)
from world_modality.data.check import DatasetKeys

PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"
META_FILE = "world_modality.json"
STATE_FILE = "training_state.pt"
RETRAIN = (
    "This checkpoint cannot be trusted: restore the folder from a copy, or retrain (a `wm train --resume` run "
    "continues from an earlier checkpoint once this one's folder is deleted)"
)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the policy (eval mode), its processors and its provenance record."""

    path: Path
    policy: PreTrainedPolicy
    preprocessor: Any
    postprocessor: Any
    meta: dict[str, Any]


def run_label(config: PreTrainedConfig) -> str:
    """The policy type, with the model type of the small family (e.g. world_transformer/F)."""
    model_type = getattr(config, "model_type", None)
    return f"{config.type}/{model_type}" if model_type else config.type


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def last_checkpoint(run_dir: Path) -> Path | None:
    link = checkpoints_dir(run_dir) / "last"
    return link.resolve() if link.exists() else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: PreTrainedPolicy,
    preprocessor,
    postprocessor,
    meta: dict[str, Any],
    training_state: dict[str, Any],
) -> Path:
    """Write checkpoint ``step`` atomically and point ``last`` at it; returns its folder."""
    root = checkpoints_dir(run_dir)
    final = root / f"{step:06d}"
    tmp = temp_folder(final)
    pretrained = tmp / PRETRAINED
    with writing(final):  # a failure leaves the temporary folder, removed by the next attempt, and `last` as it was
        policy.save_pretrained(pretrained)
        preprocessor.save_pretrained(pretrained)
        postprocessor.save_pretrained(pretrained)
        atomic_write_json(
            pretrained / META_FILE,
            {
                **meta,
                "training_step": step,
                "world_modality_version": __version__,
                "lerobot_version": version("lerobot"),
                "torch_version": torch.__version__,
            },
        )
        (tmp / TRAINING_STATE).mkdir()
        with open(tmp / TRAINING_STATE / STATE_FILE, "wb") as f:  # a file object: a failed write raises its OSError
            torch.save(training_state, f)
    record_digests(pretrained)
    record_digests(tmp / TRAINING_STATE)
    commit_folder(tmp, final)  # replaces a checkpoint of the same step (a rerun after an interrupted resume)
    atomic_symlink(root / "last", final.name)
    return final


def resolve_pretrained(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or its pretrained_model folder -> the pretrained_model folder."""
    path = Path(path).expanduser()
    for candidate in (path, path / PRETRAINED, checkpoints_dir(path) / "last" / PRETRAINED):
        if (candidate / "config.json").is_file() and (candidate / META_FILE).is_file():
            return candidate.resolve()
    raise MissingFileError(
        f"{path} is not a world-modality checkpoint (no config.json + {META_FILE} in it, "
        f"its {PRETRAINED}/ or checkpoints/last/{PRETRAINED}/)"
    )


def checkpoint_config(path: str | Path) -> tuple[Path, PreTrainedConfig]:
    """The pretrained folder, its recorded files verified, and its policy config, without loading any weights (so
    what the config alone decides is checked before the expensive part)."""
    pretrained = resolve_pretrained(path)
    verify_folder(pretrained, RETRAIN)
    config = PreTrainedConfig.from_pretrained(pretrained)
    if not hasattr(config, "encoder_spec") or not hasattr(config, "uses_world_module"):
        raise InputError(
            f"{pretrained} holds a {config.type!r} policy, which is not a world-modality policy family "
            "(world_transformer, smolvla_world, qwen_vla_world)"
        )
    return pretrained, config


def resumed_options(run_dir: str | Path) -> dict[str, Any]:
    """The `TrainOptions` a run keeps when resumed (policy_type, model_type of the small family, seed, batch_size; the
    policy's own fields are in its config), read without loading weights; {} for a run without checkpoints."""
    last = last_checkpoint(Path(run_dir).expanduser())
    return {} if last is None else _kept_options(last)[0]


def _kept_options(checkpoint: Path) -> tuple[dict[str, Any], PreTrainedConfig]:
    pretrained, config = checkpoint_config(checkpoint)
    meta = json.loads((pretrained / META_FILE).read_text())
    options = {
        "policy_type": config.type,
        "model_type": getattr(config, "model_type", None),
        "seed": meta.get("seed"),
        "batch_size": meta.get("batch_size"),
    }
    # model_type is None for the families without one; seed and batch_size are missing from the oldest records.
    return {name: value for name, value in options.items() if value is not None or name == "model_type"}, config


def check_resume(checkpoint: Path, given: dict[str, Any], policy: dict[str, Any], context: str) -> None:
    """Refuse options that contradict the run being resumed from ``checkpoint``, naming both values: ``given``
    (TrainOptions fields; None: not given) against `resumed_options`, ``policy`` (policy-config fields) against its
    config. Options equal to the run's pass."""
    kept, config = _kept_options(checkpoint)
    diffs = [
        f"{name}: the run's {kept[name]!r}, given {value!r}"
        for name, value in given.items()
        if value is not None and name in kept and value != kept[name]
    ]
    diffs += [
        f"{name}: the run's {getattr(config, name, None)!r}, given {value!r}"
        for name, value in policy.items()
        if _plain(value) != _plain(getattr(config, name, None))
    ]
    if diffs:
        raise InputError(
            f"{context}: options contradict the run ({'; '.join(diffs)}). A resumed run keeps its own "
            "settings: leave these options out (or give the run's values), or train into another --out."
        )


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (tuples as lists), so a config field read back compares with the value given."""
    return json.loads(json.dumps(value, default=str))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load policy, processors and provenance; every weight must be present (strict), every recorded file intact."""
    pretrained, config = checkpoint_config(path)
    config.device = str(device)
    try:
        policy = get_policy_class(config.type).from_pretrained(pretrained, config=config, strict=True)
        preprocessor, postprocessor = make_pre_post_processors(
            config,
            pretrained_path=str(pretrained),
            preprocessor_overrides={"device_processor": {"device": str(device)}},
        )
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:  # a file that does not read
        raise InputError(
            f"cannot load the checkpoint {pretrained} ({type(e).__name__}: {e}): a weights or processor file is "
            f"damaged or incomplete. {RETRAIN}."
        ) from e
    return Checkpoint(pretrained, policy, preprocessor, postprocessor, json.loads((pretrained / META_FILE).read_text()))


def check_inputs(config: PreTrainedConfig, spec: EncoderSpec, keys: DatasetKeys, context: str) -> None:
    """Refuse latents of another encoder or another dataset layout; errors name both values."""
    EncoderSpec.from_dict(config.encoder_spec).check_compatible(spec, f"{context} (checkpoint vs latents)")
    stored = {"state": config.state_key, "action": config.action_key, "instruction": config.instruction_key}
    given = {"state": keys.state, "action": keys.action, "instruction": keys.instruction}
    if keys.image is not None:
        stored["image"], given["image"] = config.image_key, keys.image
    diffs = [
        f"{role} key: checkpoint {stored[role]!r}, given {given[role]!r}"
        for role in stored
        if stored[role] != given[role]
    ]
    if diffs:
        raise InputError(f"{context}: dataset keys mismatch: " + "; ".join(diffs))
