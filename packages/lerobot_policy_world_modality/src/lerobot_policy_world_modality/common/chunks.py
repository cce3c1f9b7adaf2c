"""Chunked actions from the current frame: the config and the action queue of the world transformer and F+."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from lerobot.configs import NormalizationMode
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
from torch import Tensor

from lerobot_policy_world_modality.errors import InputError

ACTION_HEADS = ("mse", "flow")


@dataclass
class CurrentFrameChunkConfig:
    """Config mixin: one observation frame in, an action chunk of ``chunk_size`` out (dims from the
    features), an action head, and the AdamW + warmup/cosine training preset."""

    chunk_size: int = 16  # H: actions per chunk
    n_action_steps: int = 8

    action_head: str = "mse"  # mse | flow (rectified flow integrated in `flow_steps` Euler steps)
    flow_steps: int = 10

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            # Images and environment states go to encoders that normalise their own input.
            "VISUAL": NormalizationMode.IDENTITY,
            "ENV": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_decay_steps: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action_head not in ACTION_HEADS:
            raise InputError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise InputError(f"n_action_steps ({self.n_action_steps}) must be in 1..chunk_size ({self.chunk_size})")
        if self.flow_steps < 1:
            raise InputError(f"flow_steps must be >= 1, got {self.flow_steps}")

    @property
    def state_dim(self) -> int:
        return self.input_features[self.state_key].shape[0]

    @property
    def action_dim(self) -> int:
        return self.output_features[self.action_key].shape[0]

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay, grad_clip_norm=self.optimizer_grad_clip_norm
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.optimizer_lr * 0.1,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )


class QueuedActions:
    """Policy mixin: `select_action` from a queue of ``n_action_steps`` actions of each predicted chunk."""

    def reset_action_queue(self) -> None:
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    @torch.no_grad()
    def select_action(self, batch: dict, memory_mode: str | None = None) -> Tensor:
        """One action per call; every call's observation enters the latent history, a new chunk is
        predicted when the queue is empty."""
        batch = self.observe(batch)
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, memory_mode)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()
