"""World-alignment loss and the combined training objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def world_cosine_loss(z_pred: Tensor, z_future: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """FLARE-style alignment loss 1 - cos(z_pred, z_future), computed in float32.

    Args:
        z_pred, z_future: [B, K, D]; shapes must match exactly (no silent broadcasting).
        mask: optional [B, K] bool, True where the future exists (e.g. not past the episode end).
            Masked entries are ignored, even if they hold NaN.

    Returns:
        The mean over valid entries and the per-k mean [K] over valid entries; a k (or the
        whole batch) without valid entries contributes 0 instead of NaN.
    """
    if z_pred.shape != z_future.shape:
        raise ValueError(f"z_pred shape {tuple(z_pred.shape)} != z_future shape {tuple(z_future.shape)}")
    if mask is None:
        loss = 1.0 - F.cosine_similarity(z_pred.float(), z_future.float(), dim=-1)
        return loss.mean(), loss.mean(dim=0)
    valid = mask.bool()
    # Replace masked targets before the cosine, not only after: a NaN target would otherwise
    # give NaN gradients even though its loss term is discarded.
    z_future = torch.where(valid[..., None], z_future, z_pred.detach())
    loss = 1.0 - F.cosine_similarity(z_pred.float(), z_future.float(), dim=-1)
    loss = torch.where(valid, loss, 0.0)
    count = valid.sum(dim=0)
    per_k = loss.sum(dim=0) / count.clamp_min(1)
    return loss.sum() / count.sum().clamp_min(1), per_k


def total_loss(
    action_loss: Tensor,
    world_loss: Tensor | None = None,
    text_loss: Tensor | None = None,
    *,
    lambda_world: float = 1.0,
    lambda_text: float = 1.0,
) -> Tensor:
    """L = L_action + lambda_world * L_world + lambda_text * L_text; absent terms are skipped."""
    loss = action_loss
    if world_loss is not None:
        loss = loss + lambda_world * world_loss
    if text_loss is not None:
        loss = loss + lambda_text * text_loss
    return loss
