"""Device selection, one rule for every stage (latents, training, rollouts)."""

from __future__ import annotations

import torch

from lerobot_policy_world_modality.errors import SetupError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when present, else cpu; asking for cuda without one is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"device {device!r} was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return resolved
