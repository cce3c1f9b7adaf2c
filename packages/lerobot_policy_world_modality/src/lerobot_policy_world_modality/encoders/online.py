"""Temporal windows shared by the offline latent cache and rollouts, and the stateful rollout encoder."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lerobot_policy_world_modality.encoders.base import Frames, ImageEncoder
from lerobot_policy_world_modality.encoders.registry import build_encoder
from lerobot_policy_world_modality.encoders.spec import EncoderSpec
from lerobot_policy_world_modality.encoders.state import StateEncoder
from lerobot_policy_world_modality.errors import InputError


def window_indices(num_frames: int, m: int) -> np.ndarray:
    """[T, m] frame indices: row t is t-m+1 .. t, clamped at 0 (the first frame repeated before the start)."""
    if m < 1:
        raise InputError(f"temporal window must be >= 1, got {m}")
    return np.maximum(np.arange(num_frames)[:, None] + np.arange(1 - m, 1)[None, :], 0)


def window_frames(episode_frames: Frames, m: int) -> Frames:
    """Episode frames [T, H, W, 3] -> windows [T, m, H, W, 3] (same array type) per `window_indices`."""
    return episode_frames[window_indices(len(episode_frames), m)]


@torch.no_grad()
def encode_episode(encoder: ImageEncoder, episode_frames: Frames) -> torch.Tensor:
    """Latents [T, D] in the spec's storage dtype for every frame of one episode, windowed exactly as
    `OnlineEncoder` does at rollout (windows are built a batch at a time)."""
    frames = torch.as_tensor(episode_frames)
    indices = torch.from_numpy(window_indices(len(frames), encoder.spec.temporal_window))
    latents = [encoder.encode(frames[chunk]) for chunk in indices.split(encoder.batch_size)]
    return encoder.spec.to_storage(torch.cat(latents))


class OnlineEncoder:
    """Rollout-time encoder built from the spec stored in a policy checkpoint.

    Call `reset` at every episode start; each call takes the current frame of each env ([H, W, 3]
    or [N, H, W, 3] uint8), keeps the last m frames per env (the first frame repeated before the
    episode start) and returns latents [N, D] in the spec's storage dtype, as the cache stores them.
    For the state encoder each call takes states [D] or [N, D] instead. ``temporal_window``,
    ``camera_key`` and ``render`` state what the rollout provides; any that differ from the spec raise.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        checkpoint_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        temporal_window: int | None = None,
        camera_key: str | None = None,
        render: dict[str, Any] | None = None,
    ) -> None:
        requested = {"temporal_window": temporal_window, "camera_key": camera_key, "render": render}
        spec.check_compatible(replace(spec, **{k: v for k, v in requested.items() if v is not None}), "online encoder")
        self.encoder = build_encoder(spec, checkpoint_path=checkpoint_path, device=device)
        self.spec = self.encoder.spec
        self._window: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the frames of the previous episode."""
        self._window = None

    def fork(self) -> OnlineEncoder:
        """An encoder over the same weights with its own frame window (for envs stepped concurrently)."""
        fork = copy.copy(self)
        fork.reset()
        return fork

    @torch.no_grad()
    def __call__(self, observation: Frames) -> torch.Tensor:
        if isinstance(self.encoder, StateEncoder):
            states = torch.as_tensor(observation)
            return self.spec.to_storage(self.encoder.encode_state(states.reshape(-1, states.shape[-1])))
        frames = torch.as_tensor(observation).to(self.encoder.device)
        if frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if self._window is None:
            self._window = frames.unsqueeze(1).expand(-1, self.spec.temporal_window, -1, -1, -1).clone()
        elif frames.shape != self._window[:, -1].shape:
            raise InputError(
                f"expected frames {tuple(self._window[:, -1].shape)} as in this episode's first call, got {tuple(frames.shape)}; call reset() between episodes"
            )
        else:
            self._window = torch.cat([self._window[:, 1:], frames.unsqueeze(1)], dim=1)
        return self.spec.to_storage(self.encoder.encode(self._window))
