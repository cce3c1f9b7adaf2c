"""What the plugin's policy families share beyond the world module: chunked actions from the current frame."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor


class CurrentFrameChunkConfig:
    """Config mixin: one observation frame in, an action chunk of ``chunk_size`` out, dims from the features."""

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
