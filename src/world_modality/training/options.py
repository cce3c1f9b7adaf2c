"""`TrainOptions`: what a training run is given, with its defaults, in one module that needs none of the trainer's
imports.

`wm train` takes its flags' defaults from here (`world_modality.commands.train`), the matrix its arms' training
fields (`world_modality.matrix.config`), the trainer its run (`world_modality.training.trainer`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import DEFAULT_MODEL_TYPE
from world_modality.choices import TRAIN, Count, NonNegative, check_ranges
from world_modality.data.check import DatasetKeys


@dataclass
class TrainOptions:
    dataset: str
    latents: str
    out: str
    policy_type: str = TRAIN.policy_type
    model_type: str | None = TRAIN.model_type  # world_transformer only (A, B, B_cont, C, F); None: its config's default
    steps: Count = TRAIN.steps
    batch_size: Count = TRAIN.batch_size
    seed: int = TRAIN.seed
    save_every: Count = 500
    log_every: Count = 1
    val_fraction: float = 0.1
    val_batch_size: Count = 256
    tokens: str | None = None  # world-token folder (`wm tokens`), needed by B and C
    keys: DatasetKeys = field(default_factory=DatasetKeys)
    policy: dict[str, Any] = field(default_factory=dict)  # policy config overrides
    coc_labels: str | None = None  # CoC labels JSONL (`wm coc generate`) for policies with a text loss
    require_coc: bool = False  # every training episode must have a CoC label
    device: str = "auto"
    # Processes decoding the VLM families' camera frames ahead of the step; None: `trainer.DATA_WORKERS` on CUDA, none
    # on CPU (where they would take the cores the step computes on). Any number gives the same batches.
    data_workers: NonNegative | None = None
    resume: bool = False
    # The fast training step: the policy family's layer stacks compiled (torch.compile, forward and backward) and, on
    # CUDA, the optimizer's update fused; the same losses within float rounding (tests/test_train_speed.py).
    compile: bool = False
    wandb: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges(TrainOptions, vars(self))  # before any work

    @property
    def world_model_type(self) -> str | None:
        """The world transformer's model: the option, else its config's default (F); None for the other families."""
        if self.policy_type != "world_transformer":
            return None
        return self.model_type or DEFAULT_MODEL_TYPE


# The options a resumed run keeps from its first start (`world_modality.training.checkpoint.resumed_options`); given
# again, they must equal the run's (`check_resume`).
RESUMED_OPTIONS = ("policy_type", "model_type", "seed", "batch_size")

# Policy-config fields a run sets itself (`trainer.build_config`), each with what sets it: a policy override (`wm
# train --set`, a matrix arm's `policy:`) may repeat but not contradict them.
POLICY_SET_BY_RUN = {
    "model_type": "--model-type",
    "instructions": "the dataset's instructions",
    "latent_dim": "the latent cache",
    "encoder_spec": "the latent cache",
    "state_key": "--state-key",
    "action_key": "--action-key",
    "instruction_key": "--instruction-key",
    "image_key": "the latent cache's camera, or for the VLM families --image-key (default the dataset's first camera)",
    "input_features": "the dataset and the latent cache",
    "output_features": "the dataset",
    "device": "--device",
    "scheduler_decay_steps": "--steps",
    "codebook_size": "--tokens",
}


def option_default(name: str) -> Any:
    """TrainOptions' default of the field ``name``."""
    found = {f.name: f for f in dataclasses.fields(TrainOptions)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    if found.default is dataclasses.MISSING:
        raise KeyError(f"TrainOptions.{name} has no default")
    return found.default
