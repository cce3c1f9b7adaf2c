"""Prophet: predicts the next K world latents from a short latent history."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lerobot_policy_world_modality.errors import InputError


@dataclass
class ProphetConfig:
    """Size of the Prophet; its width is independent of the policy's hidden size."""

    latent_dim: int
    num_future: int = 4
    history_len: int = 4
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 2
    dim_feedforward: int | None = None  # defaults to 4 * d_model
    dropout: float = 0.0
    delta: bool = False  # predict z_{t+k} - z_t and add z_t back


class Prophet(nn.Module):
    """Pre-norm transformer encoder over [history tokens; K learned future query slots].

    The output at query slot k (k = 1..K) is the predicted absolute latent z_{t+k}, also in
    delta mode, so callers never need to know which parameterisation was trained.
    """

    def __init__(self, config: ProphetConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.in_proj = nn.Linear(config.latent_dim, d)
        self.pos_emb = nn.Parameter(torch.randn(config.history_len, d) * 0.02)
        self.future_queries = nn.Parameter(torch.randn(config.num_future, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=config.num_heads,
            dim_feedforward=config.dim_feedforward or 4 * d,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors are unsupported with norm_first; disabling avoids a warning per build.
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.num_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, config.latent_dim)

    def forward(self, z_history: Tensor, history_mask: Tensor | None = None) -> Tensor:
        """Predict future latents.

        Args:
            z_history: [B, T, D_latent], T <= history_len, oldest first; the last element is z_t.
            history_mask: optional [B, T] bool, True where the history entry is real (False =
                padding, e.g. before the episode start). z_t (the last entry) must be real.

        Returns:
            [B, K, D_latent] predicted z_{t+1..t+K}.
        """
        batch, t_ctx, _ = z_history.shape
        if t_ctx > self.config.history_len:
            raise InputError(f"history length {t_ctx} exceeds Prophet history_len {self.config.history_len}")
        # Right-aligned positions: the current step z_t always gets the same embedding,
        # whatever the history length.
        tokens = self.in_proj(z_history) + self.pos_emb[self.config.history_len - t_ctx :]
        queries = self.future_queries.unsqueeze(0).expand(batch, -1, -1)
        x = torch.cat([tokens, queries], dim=1)
        padding = None
        if history_mask is not None:
            # Query slots are always attendable, so no row is fully masked (no NaN).
            slots_valid = history_mask.new_ones(batch, self.config.num_future, dtype=torch.bool)
            padding = ~torch.cat([history_mask.bool(), slots_valid], dim=1)
        x = self.encoder(x, src_key_padding_mask=padding)
        z_pred = self.out_head(self.out_norm(x[:, t_ctx:]))
        if self.config.delta:
            z_pred = z_pred + z_history[:, -1:]
        return z_pred
