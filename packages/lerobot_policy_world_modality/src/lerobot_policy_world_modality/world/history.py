"""The world-latent batch keys and the rollout-time latent history every policy family keeps.

Training batches carry cached latents under these keys; at rollout a policy has only the current
observation, so `LatentHistory` encodes it online with the checkpoint's encoder spec and keeps the
last ``history_len`` latents per env. Masks follow the world module: True = real.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from lerobot_policy_world_modality.encoders import EncoderSpec, OnlineEncoder

# LeRobot's processor pipeline keeps only `observation.*` keys (besides the action), hence the prefix
# also on the future latents, which are training targets.
WORLD_LATENTS = "observation.world_latents"  # [B, T, D] history ending at z_t
WORLD_LATENTS_MASK = "observation.world_latents_mask"  # [B, T]
WORLD_FUTURE = "observation.world_future"  # [B, K, D] true z_{t+1..t+K}
WORLD_FUTURE_MASK = "observation.world_future_mask"  # [B, K]
# Rollouts: one torch.Generator per env, seeded from its episode (never through the processors). Every random
# draw of acting (memory controls, flow noise) comes from them, so an episode's actions depend on the episode
# alone, not on the global RNG or on which other episodes share the lockstep batch.
ROLLOUT_GENERATORS = "rollout_generators"


def rollout_noise(
    batch: dict[str, Any], shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal noise [B, *shape]: sample i from the batch's generator i (`ROLLOUT_GENERATORS`),
    from the global RNG when the batch has none (training, lerobot-eval)."""
    generators = batch.get(ROLLOUT_GENERATORS)
    if generators is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} rollout generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device, dtype)


def encoder_input(observation: Tensor, is_state: bool) -> Tensor:
    """A LeRobot observation -> what `OnlineEncoder` takes: states [B, D], or uint8 frames [B, H, W, 3]
    (LeRobot batches hold float images [B, 3, H, W] in [0, 1])."""
    if is_state:
        return observation.float()
    if observation.dtype != torch.uint8:
        observation = (observation.float() * 255).round().clamp(0, 255).to(torch.uint8)
    if observation.ndim == 4 and observation.shape[1] == 3 and observation.shape[-1] != 3:
        observation = observation.permute(0, 2, 3, 1)
    return observation


class LatentHistory:
    """Online world latents for rollouts: one call per env step appends z_t of every env.

    The encoder is built lazily (on the device of the first batch) from the spec, so a policy
    that only trains on cached latents never loads it.
    """

    def __init__(self, encoder_spec: EncoderSpec, history_len: int, source_key: str | None = None) -> None:
        self.spec = encoder_spec
        self.history_len = history_len
        self.source_key = source_key or encoder_spec.camera_key
        self._encoder: OnlineEncoder | None = None
        self.reset()

    def reset(self) -> None:
        """Start new episodes: forget the latents and the encoder's frame window."""
        self._history: Tensor | None = None
        self._mask: Tensor | None = None
        if self._encoder is not None:
            self._encoder.reset()

    def fork(self, device: torch.device | str) -> LatentHistory:
        """A history with its own latents and frame window over the same encoder weights (built now,
        on ``device``, if not yet): one per group of envs the rollout runner steps concurrently."""
        if self._encoder is None:
            self._encoder = OnlineEncoder(self.spec, device=device)
        fork = copy.copy(self)
        fork._encoder = self._encoder.fork()
        fork.reset()
        return fork

    def observe(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
        """The batch with the latent history keys added (unchanged when it already has them)."""
        if WORLD_LATENTS in batch:
            return batch
        if self.source_key not in batch:
            raise KeyError(
                f"the batch has neither {WORLD_LATENTS!r} nor the encoder's input {self.source_key!r} "
                f"(encoder spec camera_key); batch keys: {sorted(batch)}"
            )
        if self._encoder is None:
            self._encoder = OnlineEncoder(self.spec, device=device)
        z = self._encoder(encoder_input(batch[self.source_key], self.spec.reads_states))
        z = z.to(device, torch.float32)
        if self._history is None:
            self._history = z.new_zeros(z.shape[0], self.history_len, z.shape[1])
            self._mask = torch.zeros(z.shape[0], self.history_len, dtype=torch.bool, device=z.device)
        self._history = torch.cat([self._history[:, 1:], z[:, None]], dim=1)
        self._mask = torch.cat([self._mask[:, 1:], self._mask.new_ones(z.shape[0], 1)], dim=1)
        return {**batch, WORLD_LATENTS: self._history, WORLD_LATENTS_MASK: self._mask}

    def latest_finite(self) -> Tensor | None:
        """Per env, whether its latest latent is finite (None before the first step): a rollout must not act on a
        latent that is NaN or inf."""
        return None if self._history is None else self._history[:, -1].isfinite().all(dim=-1)
