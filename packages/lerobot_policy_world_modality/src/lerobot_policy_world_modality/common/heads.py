"""Action heads on per-step query states [B, H, d]: a linear read-out (`mse`) or rectified flow (`flow`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lerobot_policy_world_modality.world.history import rollout_noise


class FlowHead(nn.Module):
    """Rectified-flow action head: predicts the velocity (a - noise) from x_t = (1-t) noise + t a."""

    def __init__(self, d_model: int, action_dim: int) -> None:
        super().__init__()
        self.action_in = nn.Linear(action_dim, d_model)
        self.time_in = nn.Sequential(nn.Linear(1, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, action_dim)
        )

    def velocity(self, h: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(h + self.action_in(x_t) + self.time_in(t[:, None, None].expand(-1, h.shape[1], 1)))

    def loss_terms(self, h: Tensor, actions: Tensor) -> Tensor:
        """Per-element velocity error [B, H, A] at a uniformly drawn time."""
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device)
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
        return (self.velocity(h, x_t, t) - (actions - noise)) ** 2

    def sample(self, h: Tensor, action_dim: int, steps: int, batch: dict[str, Any]) -> Tensor:
        """Euler integration from noise (drawn by `rollout_noise`: the batch's per-episode generators)."""
        return self.integrate(h, rollout_noise(batch, (h.shape[0], h.shape[1], action_dim), h.device, h.dtype), steps)

    def integrate(self, h: Tensor, noise: Tensor, steps: int) -> Tensor:
        """Euler integration of the velocity from ``noise`` [B, H, A] (of ``h``'s dtype) in ``steps`` steps."""
        x = noise
        for i in range(steps):
            t = torch.full((h.shape[0],), i / steps, device=h.device, dtype=h.dtype)
            x = x + self.velocity(h, x, t) / steps
        return x


class ActionHeads:
    """Policy mixin: the config's ``action_head`` on query states. The head is the attribute
    ``flow_head`` or ``mse_head`` of the policy itself (the weight names checkpoints hold)."""

    def build_action_head(self, d_model: int) -> None:
        if self.config.action_head == "flow":
            self.flow_head = FlowHead(d_model, self.config.action_dim)
        else:
            self.mse_head = nn.Linear(d_model, self.config.action_dim)

    def action_loss_terms(self, h: Tensor, actions: Tensor) -> Tensor:
        """Per-element training error [B, H, A] of the head on states ``h`` for the target ``actions``."""
        if self.config.action_head == "flow":
            return self.flow_head.loss_terms(h, actions)
        return (self.mse_head(h) - actions) ** 2

    def sample_actions(self, h: Tensor, batch: dict[str, Any]) -> Tensor:
        """The head's action chunk [B, H, A] (sampled for `flow`)."""
        if self.config.action_head == "flow":
            return self.flow_head.sample(h, self.config.action_dim, self.config.flow_steps, batch)
        return self.mse_head(h)

    def head_noise(self, batch: dict[str, Any], batch_size: int, device: torch.device, dtype: torch.dtype):
        """The noise `sample_actions` would start from for a head input of ``dtype`` (None for `mse`), drawn ahead:
        for code that must not draw it itself (a CUDA graph)."""
        if self.config.action_head != "flow":
            return None
        return rollout_noise(batch, (batch_size, self.config.chunk_size, self.config.action_dim), device, dtype)

    def actions_from_noise(self, h: Tensor, noise: Tensor | None) -> Tensor:
        """`sample_actions` from noise drawn by `head_noise`."""
        if self.config.action_head == "flow":
            return self.flow_head.integrate(h, noise, self.config.flow_steps)
        return self.mse_head(h)
