"""``wm train``: train one policy configuration (any family: world_transformer A/B/B_cont/C/F, smolvla_world,
qwen_vla_world) on a dataset and its cached world latents."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

from lerobot_policy_world_modality import POLICY_TYPES
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
    DEFAULT_MODEL_TYPE,
    MODEL_TYPES,
)
from world_modality.choices import COUNT, NON_NEGATIVE
from world_modality.commands import add_common, add_no_verify
from world_modality.data.check import DatasetKeys
from world_modality.training.options import RESUMED_OPTIONS, TrainOptions, option_default

# Config fields with their own flag (where the chosen family has them); any other field goes through --set.
_POLICY_FLAGS = {
    "chunk_size": int,
    "n_action_steps": int,
    "history_len": int,
    "num_future": int,
    "action_head": str,
    "flow_steps": int,
    "d_model": int,
    "n_layers": int,
    "n_heads": int,
    "lambda_world": float,
    "memory_source": str,
    "world_memory_mode_train": str,
    "world_memory_mode_rollout": str,
    "optimizer_lr": float,
    "scheduler_warmup_steps": int,
    "text_encoder_path": str,
}
# TrainOptions fields without a flag (they keep TrainOptions' defaults); every other field is set from the flags
# (`train_options`), whose defaults are TrainOptions' (`option_default`).
NO_FLAG = ("val_batch_size",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a baseline or world-memory policy on cached latents",
        description=(
            "Train a policy on a dataset's cached world latents. --policy world_transformer (the small family, "
            "--model-type A/B/B_cont/C/F) decodes no image; smolvla_world and qwen_vla_world also read the "
            "current frame of --image-key. The loop is plain PyTorch (no "
            "lerobot-train): uniform batches of training frames, the policy's LeRobot preprocessor for "
            "normalisation, AdamW with warmup + cosine decay, mixed precision as lerobot-train picks it for the "
            "policy config (use_amp), camera frames decoded ahead of the step (--data-workers). Checkpoints (RUN_DIR/checkpoints/<step>/) are "
            "self-describing LeRobot save_pretrained folders (encoder spec, dataset keys, instructions, "
            "normalisation, versions) plus a training_state/ for --resume; each is written atomically. "
            "Every logged value (losses, world gate raw/tanh, attention mass and world loss per future step, "
            "memory-source mix, validation loss on held-out episodes) goes to RUN_DIR/tensorboard. "
            "Several GPUs or nodes: run the same command under `accelerate launch --multi_gpu --num_processes N "
            "-m world_modality.cli train ...` (data parallel; --batch-size is the global batch; see the README). "
            "The last line says whether the world gate opened (|tanh(gate)| against the read-check's thresholds)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("dataset", help="LeRobot dataset folder (or a repo id in the local LeRobot cache)")
    parser.add_argument("--latents", required=True, help="latent cache folder made by `wm latents` for this dataset")
    # Unset (SUPPRESS): with --resume these take the run's values; a value given must equal the run's.
    parser.add_argument(
        "--policy",
        dest="policy_type",
        default=argparse.SUPPRESS,
        choices=POLICY_TYPES,
        help=f"policy family (default {option_default('policy_type')}; with --resume: the run's)",
    )
    parser.add_argument(
        "--model-type",
        default=argparse.SUPPRESS,
        choices=MODEL_TYPES,
        help=f"world_transformer model (default {DEFAULT_MODEL_TYPE}; with --resume: the run's)",
    )
    parser.add_argument(
        "--image-key",
        default=DatasetKeys.image,
        help="camera the VLM families read (default: the dataset's first camera)",
    )
    parser.add_argument(
        "--coc-labels",
        default=option_default("coc_labels"),
        help="CoC labels JSONL (`wm coc generate`) for a text loss",
    )
    parser.add_argument("--require-coc", action="store_true", help="every training episode must have a CoC label")
    parser.add_argument(
        "--tokens", default=option_default("tokens"), help="world-token folder made by `wm tokens` (models B and C)"
    )
    parser.add_argument(
        "--steps",
        type=COUNT,
        default=option_default("steps"),
        help="total optimisation steps (a resumed run ends here too)",
    )
    parser.add_argument(
        "--batch-size",
        type=COUNT,
        default=argparse.SUPPRESS,
        help=f"global batch (default {option_default('batch_size')}; with --resume: the run's)",
    )
    parser.add_argument("--out", required=True, help="run folder (checkpoints, tensorboard)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its own "
        "settings (a flag that contradicts them is refused)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        help=f"training seed (default {option_default('seed')}; with --resume: the run's)",
    )
    parser.add_argument(
        "--save-every", type=COUNT, default=option_default("save_every"), help="checkpoint (and validate) every N steps"
    )
    parser.add_argument(
        "--log-every", type=COUNT, default=option_default("log_every"), help="log to TensorBoard every N steps"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=option_default("val_fraction"),
        help="per instruction, the last ceil(f * n) of its n episodes are held out for validation",
    )
    parser.add_argument(
        "--device", default=option_default("device"), help="auto (cuda when present), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--data-workers",
        type=NON_NEGATIVE,
        default=option_default("data_workers"),
        help="processes decoding the VLM families' camera frames ahead of the training step (the batches "
        "are the same for any number; default: 4 on CUDA as lerobot-train, 0 on CPU)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the fast training step: compile the policy's layer stacks (torch.compile; the first steps wait for "
        "it) and, on CUDA, fuse the optimizer's update",
    )
    parser.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    parser.add_argument("--state-key", default=DatasetKeys.state)
    parser.add_argument("--action-key", default=DatasetKeys.action)
    parser.add_argument(
        "--instruction-key", default=DatasetKeys.instruction, help="LeRobot datasets keep the instruction under 'task'"
    )
    parser.add_argument(
        "--single-instruction",
        action="store_true",
        help="every episode really has the one instruction under --instruction-key: accept the dataset although another "
        "text column varies between episodes (refused otherwise: the instructions are likely there)",
    )
    for name, kind in _POLICY_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"policy config {name}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other policy config field (VALUE parsed as JSON when it parses)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(parser)
    add_no_verify(parser)
    parser.set_defaults(handler=_train, resume_flags=("--resume",))


def _policy_overrides(args, policy_type: str) -> dict:
    """The policy-config fields the flags and --set give; a field given twice must be given the same value."""
    from world_modality.training.trainer import policy_config_class

    known = {f.name for f in fields(policy_config_class(policy_type))}
    overrides = {name: getattr(args, name) for name in _POLICY_FLAGS if getattr(args, name) is not None}
    given = {name: f"--{name.replace('_', '-')} {value}" for name, value in overrides.items()}
    absent = [name for name in overrides if name not in known]
    if absent:
        raise InputError(f"--{absent[0].replace('_', '-')} is not a setting of {policy_type}")
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or name not in known:
            raise InputError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(known)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if name in overrides and overrides[name] != value:
            raise InputError(f"--set {item} contradicts {given[name]}: give {name} once")
        overrides[name], given[name] = value, f"--set {item}"
    return overrides


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The TrainOptions of a `wm train` command line: each field from its flag (whose default is TrainOptions'), the
    resumed run's where a flag left unset takes it (`RESUMED_OPTIONS`)."""
    from world_modality.training.checkpoint import resumed_options

    # Options not given take the resumed run's (those given must equal them: `check_resume`), else the defaults.
    kept = resumed_options(args.out) if args.resume else {}
    resumed = {
        name: getattr(args, name) if hasattr(args, name) else kept.get(name, option_default(name))
        for name in RESUMED_OPTIONS
    }
    names = {f.name for f in fields(TrainOptions)} - {*NO_FLAG, *RESUMED_OPTIONS, "keys", "policy", "progress"}
    return TrainOptions(
        **{name: getattr(args, name) for name in names},
        **resumed,
        keys=DatasetKeys(
            image=args.image_key,
            state=args.state_key,
            action=args.action_key,
            instruction=args.instruction_key,
            single_instruction=args.single_instruction,
        ),
        policy=_policy_overrides(args, resumed["policy_type"]),
        progress=not args.no_progress,
    )


def _train(args) -> int:
    from world_modality.training.trainer import train

    checkpoint = train(train_options(args))
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per `accelerate launch` process
        from world_modality.report.readcheck import gate_line, load_gate_run

        print(f"checkpoint: {checkpoint}")
        print(gate_line(load_gate_run(Path(args.out))))
    return 0
