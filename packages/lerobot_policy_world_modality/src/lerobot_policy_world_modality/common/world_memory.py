"""The world-memory config and policy mixin that every policy family shares (docs/ARCHITECTURE.md, The world module).

`WorldMemoryConfig` holds the world-memory fields (one set of defaults, one validation); a family's LeRobot
config dataclass inherits it, so the fields stay flat (``--policy.prophet_dim=...``, ``config.json``).
`WorldModuleConfig.from_policy_config` maps them onto the world module. `WorldMemoryPolicy` is what the
families' models share around it: the latent-history mask, the padded action loss, the instruction texts,
the step counter and what reads it (the training recipes), and the gate's optimizer parameter group.

Training recipes that let predicted memory be read (README, World-memory training recipes):
- ``memory_source: scheduled``: the `pred` memory is the oracle (true futures) with a probability annealed
  from 1 at ``memory_schedule_start`` to 0 at ``memory_schedule_end``; `wm train` anneals over the first
  half of training (`SCHEDULED_ORACLE_SHARE`) when both are left at 0.
- two stages: for the first ``prophet_pretrain_steps`` training steps only the Prophet trains, on the world
  loss (the rest of the policy is not run); then the policy trains with the Prophet frozen
  (``prophet_freeze_after_pretrain``) or fine-tuned with it. The stage follows the step counter, which
  checkpoints hold, so an interrupted run resumes in the right stage.
- the gate: ``gate_lr_multiplier`` (its learning rate relative to the rest), ``gate_type`` (`scalar` or
  one gate per `channel`) and ``gate_init``. Only ``gate_init = 0`` keeps the guarantee that an untrained
  memory leaves the policy bit for bit unchanged, so 0 stays the default (pretrained policies).
- ``lambda_world_schedule: linear``: the world-loss weight goes linearly from ``lambda_world_start`` to
  ``lambda_world`` over ``lambda_world_schedule_steps`` (e.g. a large weight first, so the Prophet predicts
  real futures before the policy has learnt to do without the memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.file_digests import verify_folder
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES, MemoryMode, MemorySource
from lerobot_policy_world_modality.world import WorldModule, WorldOutputs, total_loss
from lerobot_policy_world_modality.world.gated_cross_attention import GATE_TYPES
from lerobot_policy_world_modality.world.history import (
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)

# `memory_source: scheduled` without an explicit schedule: oracle fraction 1 -> 0 over this share of training.
SCHEDULED_ORACLE_SHARE = 0.5
LAMBDA_WORLD_SCHEDULES = ("constant", "linear")
# The batch key of the instruction texts, whatever dataset column they were read from (the config's
# ``instruction_key``): LeRobot's processors pass only their own complementary keys through, `task` among them.
INSTRUCTION_BATCH_KEY = "task"


@dataclass
class WorldMemoryConfig:
    """Config mixin: the world latents a policy reads, the world module and its training recipes.

    A family sets ``world_baseline`` (a class attribute, not a field): how to train its baseline without
    a world module, named in the error for ``world_memory_mode_train='none'``.
    """

    # Where the inputs come from (self-describing checkpoints, docs/ARCHITECTURE.md, Checkpoints).
    # encoder_spec is EncoderSpec.to_dict() of the latents' encoder.
    encoder_spec: dict | None = None
    latent_dim: int = 0  # filled from the encoder spec
    state_key: str = "observation.state"
    action_key: str = "action"
    instruction_key: str = "task"  # the dataset column; batches carry the texts under INSTRUCTION_BATCH_KEY
    image_key: str | None = None  # the dataset's camera key (None for a policy reading state latents only)
    # The training dataset's instructions: the world transformer's vocabulary; informative for the VLMs.
    instructions: list[str] = field(default_factory=list)

    # World module (lerobot_policy_world_modality.world).
    history_len: int = 4  # T latents z_{t-T+1..t}
    num_future: int = 4  # K: the Prophet predicts z_{t+1..t+K}
    prophet_dim: int = 256  # the Prophet's width, independent of the policy's
    prophet_heads: int = 4
    prophet_layers: int = 2
    prophet_delta: bool = False  # predict z_{t+k} - z_t
    cross_attn_heads: int = 4  # must divide the width of the states that read the memory
    lambda_world: float = 1.0
    memory_source: str = "predicted"  # predicted | oracle | scheduled
    memory_schedule_start: int = 0
    memory_schedule_end: int = 0
    detach_prophet_for_policy: bool = False
    world_memory_mode_train: str = "pred"  # `zero` trains E1 (the capacity control)
    world_memory_mode_rollout: str = "pred"  # pred | zero | random | shuffle | oracle | signflip | other

    # Training recipes (module docstring).
    gate_type: str = "scalar"  # scalar | channel
    gate_init: float = 0.0
    gate_lr_multiplier: float = 1.0
    lambda_world_schedule: str = "constant"  # constant | linear
    lambda_world_start: float = 0.0
    lambda_world_schedule_steps: int = 0
    prophet_pretrain_steps: int = 0
    prophet_freeze_after_pretrain: bool = False

    world_baseline = "a policy without the world module"

    def __post_init__(self) -> None:
        super().__post_init__()
        MemorySource(self.memory_source)
        if MemoryMode(self.world_memory_mode_train) is MemoryMode.OTHER:
            raise InputError(
                "world_memory_mode_train 'other' is a rollout control (another episode's memory), not a "
                "training mode: train on `pred`, or `zero` for the capacity control"
            )
        if MemoryMode(self.world_memory_mode_train) is MemoryMode.NONE:
            raise InputError(
                f"world_memory_mode_train 'none' disables the world module: for the baseline (E0) "
                f"train {self.world_baseline}"
            )
        if self.world_memory_mode_rollout not in ROLLOUT_MODES:
            raise InputError(
                f"world_memory_mode_rollout must be one of {ROLLOUT_MODES}, got {self.world_memory_mode_rollout!r}"
            )
        at_least_one = (
            "history_len",
            "num_future",
            "prophet_dim",
            "prophet_heads",
            "prophet_layers",
            "cross_attn_heads",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prophet_dim % self.prophet_heads:
            raise InputError(f"prophet_heads ({self.prophet_heads}) must divide prophet_dim ({self.prophet_dim})")
        if not 0 <= self.memory_schedule_start <= self.memory_schedule_end:
            raise InputError(
                f"memory schedule: need 0 <= memory_schedule_start ({self.memory_schedule_start}) <= "
                f"memory_schedule_end ({self.memory_schedule_end})"
            )
        if self.gate_type not in GATE_TYPES:
            raise InputError(f"gate_type must be one of {GATE_TYPES}, got {self.gate_type!r}")
        if not math.isfinite(self.gate_init):
            raise InputError(f"gate_init must be finite, got {self.gate_init}")
        if not self.gate_lr_multiplier > 0:
            raise InputError(f"gate_lr_multiplier must be > 0, got {self.gate_lr_multiplier}")
        if self.lambda_world < 0 or self.lambda_world_start < 0:
            raise InputError(
                f"lambda_world ({self.lambda_world}) and lambda_world_start ({self.lambda_world_start}) must be >= 0"
            )
        if self.lambda_world_schedule not in LAMBDA_WORLD_SCHEDULES:
            raise InputError(
                f"lambda_world_schedule must be one of {LAMBDA_WORLD_SCHEDULES}, got {self.lambda_world_schedule!r}"
            )
        if self.lambda_world_schedule == "linear" and self.lambda_world_schedule_steps < 1:
            raise InputError(
                "lambda_world_schedule 'linear' needs lambda_world_schedule_steps >= 1 (the steps over "
                "which the weight goes from lambda_world_start to lambda_world)"
            )
        if self.prophet_pretrain_steps < 0:
            raise InputError(f"prophet_pretrain_steps must be >= 0, got {self.prophet_pretrain_steps}")
        if self.prophet_freeze_after_pretrain and self.prophet_pretrain_steps == 0:
            raise InputError(
                "prophet_freeze_after_pretrain freezes the Prophet after its own training stage: set "
                "prophet_pretrain_steps > 0 (else the policy would read an untrained, frozen Prophet)"
            )
        recipes = {
            "memory_source": "predicted",
            "gate_type": "scalar",
            "gate_init": 0.0,
            "gate_lr_multiplier": 1.0,
            "prophet_pretrain_steps": 0,
        }
        changed = [name for name, default in recipes.items() if getattr(self, name) != default]
        if changed and not self.uses_world_module:
            raise InputError(f"{changed} configure the world module, and this {self.type} config has none")
        if self.encoder_spec is not None:
            output_dim = EncoderSpec.from_dict(self.encoder_spec).output_dim
            if self.latent_dim == 0:
                self.latent_dim = output_dim
            elif self.latent_dim != output_dim:
                raise InputError(f"latent_dim {self.latent_dim} != the encoder spec's output_dim {output_dim}")

    @property
    def latent_source_key(self) -> str | None:
        """The observation key the world encoder reads at rollout (a camera, or the environment state)."""
        return None if self.encoder_spec is None else self.encoder_spec["camera_key"]

    def schedule_memory_source_over(self, total_steps: int) -> None:
        """A trainer that knows the run's length: `scheduled` without an explicit schedule anneals over the
        first `SCHEDULED_ORACLE_SHARE` of it."""
        if MemorySource(self.memory_source) is MemorySource.SCHEDULED and self.memory_schedule_end == 0:
            self.memory_schedule_end = max(1, round(SCHEDULED_ORACLE_SHARE * total_steps))


# What to do about a policy folder whose files differ from those recorded when it was saved.
DAMAGED_POLICY = "This policy folder cannot be trusted: restore it from a copy, or retrain it"


class WorldMemoryPolicy:
    """Policy mixin of every family: what surrounds the world module. A family provides ``config``
    (a `WorldMemoryConfig`) and its `WorldModule` as ``world`` (or overrides ``world_module``), and calls
    `register_step_counter` in its ``__init__``."""

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *args: Any, **kwargs: Any):
        """LeRobot's loading, after checking a local folder against the digests recorded when it was written (so
        `lerobot-eval` and any other loader refuse a damaged checkpoint as `wm` does)."""
        if Path(pretrained_name_or_path).is_dir():
            verify_folder(pretrained_name_or_path, DAMAGED_POLICY)
        return super().from_pretrained(pretrained_name_or_path, *args, **kwargs)

    @property
    def world_module(self) -> WorldModule | None:
        """The policy's world module, None for a configuration without one."""
        return self.world if self.config.uses_world_module else None

    def register_step_counter(self) -> None:
        # Counts training forwards: the step of the schedules and stages, also under lerobot-train; saved
        # with the weights, so a resumed run continues where it stopped.
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def count_training_step(self) -> None:
        if self.training:
            self.train_step += 1

    # --- training recipes ----------------------------------------------------------------------

    def in_prophet_stage(self) -> bool:
        """True while training the Prophet alone (the first ``prophet_pretrain_steps`` training steps)."""
        steps = self.config.prophet_pretrain_steps
        # Reads the step counter (a wait for the GPU) only when the two-stage recipe is on.
        return self.training and steps > 0 and self.world_module is not None and int(self.train_step) < steps

    @property
    def trains_prophet(self) -> bool:
        """False after the Prophet's own stage when it is frozen for the policy's."""
        return not self.config.prophet_freeze_after_pretrain

    def world_loss_weight(self) -> float | Tensor:
        """lambda_world, or its schedule at the current step (a tensor: no wait for the GPU)."""
        config = self.config
        if config.lambda_world_schedule == "constant":
            return config.lambda_world
        progress = (self.train_step.float() / config.lambda_world_schedule_steps).clamp(max=1.0)
        return config.lambda_world_start + (config.lambda_world - config.lambda_world_start) * progress

    def world_loss_total(
        self, action_loss: Tensor, world_loss: Tensor | None, text_loss: Tensor | None = None, lambda_text: float = 1.0
    ) -> Tensor:
        """L = L_action + weight * L_world (+ lambda_text * L_text) with the scheduled world-loss weight."""
        return total_loss(
            action_loss, world_loss, text_loss, lambda_world=self.world_loss_weight(), lambda_text=lambda_text
        )

    def prophet_stage_forward(
        self, z_history: Tensor, history_mask: Tensor, z_future: Tensor | None, future_mask: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss and logs of one step of the Prophet's own stage: its world loss only."""
        world_out = self.world_module.prophet_forward(z_history, z_future, future_mask, history_mask=history_mask)
        self.count_training_step()
        logs = world_out.log_dict()
        logs["loss"] = logs["world_loss"]
        return world_out.world_loss, logs

    def world_logs(self, world_out: WorldOutputs | None) -> dict[str, Tensor | float]:
        """The world module's scalars and, when scheduled, the world-loss weight (as tensors)."""
        if world_out is None:
            return {}
        logs = world_out.log_tensors()
        if self.config.lambda_world_schedule != "constant":
            logs["world_loss_weight"] = self.world_loss_weight()
        return logs

    def get_optim_params(self) -> list[nn.Parameter] | list[dict]:
        """The trainable parameters; with ``gate_lr_multiplier`` != 1, the gate in a parameter group of its
        own with that multiple of the learning rate (wm train and lerobot-train's preset optimizer both
        build from this; a single group otherwise, so earlier runs' optimizer states still load)."""
        params = self.optim_parameters()
        if self.world_module is None or self.config.gate_lr_multiplier == 1:
            return params
        gate = self.world_module.cross_attn.gate
        lr = self.config.get_optimizer_preset().lr * self.config.gate_lr_multiplier
        return [{"params": [p for p in params if p is not gate]}, {"params": [gate], "lr": lr}]

    def optim_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- batch inputs --------------------------------------------------------------------------

    def history_latents(self, batch: dict, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The batch's latent history (`checked_history`), in ``dtype``."""
        return self.checked_history(batch[WORLD_LATENTS].to(dtype), batch.get(WORLD_LATENTS_MASK))

    @staticmethod
    def future_latents(batch: dict, dtype: torch.dtype = torch.float32) -> tuple[Tensor | None, Tensor | None]:
        """The batch's true future latents [B, K, D] in ``dtype`` and their mask [B, K] (None where absent)."""
        future = batch.get(WORLD_FUTURE)
        return None if future is None else future.to(dtype), batch.get(WORLD_FUTURE_MASK)

    def checked_history(self, z_history: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The latent history [B, T, D] with its padding zeroed, and its mask [B, T] (True = real; all
        real when None). The last entry (z_t) must be real: the Prophet predicts from it."""
        if z_history.shape[1] > self.config.history_len:
            raise InputError(
                f"latent history of {z_history.shape[1]} steps, but the policy was built for "
                f"history_len {self.config.history_len}"
            )
        mask = (
            torch.ones(z_history.shape[:2], dtype=torch.bool, device=z_history.device) if mask is None else mask.bool()
        )
        if not mask[:, -1].all():
            raise InputError("the last latent history entry (z_t) must be real in every sample")
        return torch.where(mask[..., None], z_history, 0.0), mask

    def padded_action_loss(self, per_element: Tensor, batch: dict) -> Tensor:
        """Mean of a per-element action error [B, H, A] over the chunk steps that are not padding
        (LeRobot's ``<action_key>_is_pad``: True = padding, past the episode end)."""
        pad = batch.get(f"{self.config.action_key}_is_pad")
        valid = torch.ones_like(per_element[..., 0], dtype=torch.bool) if pad is None else ~pad
        return (per_element.mean(-1) * valid).sum() / valid.sum().clamp_min(1)

    def instruction_texts(self, batch: dict, batch_size: int) -> list[str]:
        """One instruction per sample (a single string is repeated)."""
        texts = batch.get(INSTRUCTION_BATCH_KEY)
        if texts is None:
            raise KeyError(f"the batch has no instruction under {INSTRUCTION_BATCH_KEY!r}; keys: {sorted(batch)}")
        texts = [texts] * batch_size if isinstance(texts, str) else list(texts)
        if len(texts) != batch_size:
            raise InputError(f"{len(texts)} instructions for a batch of {batch_size}")
        return texts
