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


def device_name(device: torch.device) -> str:
    """What an episode record names the device that acted by: ``cpu``, or the GPU's model (e.g. ``NVIDIA H100 80GB
    HBM3``): the same checkpoint may act slightly differently on another device, so a report says where arms differ."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
