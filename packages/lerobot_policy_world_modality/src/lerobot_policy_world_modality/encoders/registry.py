"""`build_encoder`: the one way to construct a world encoder, from a name or from a stored spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lerobot_policy_world_modality.encoders.base import WorldEncoder
from lerobot_policy_world_modality.encoders.hf import Dinov2Encoder, VJEPA2Encoder
from lerobot_policy_world_modality.encoders.learned import LearnedEncoder
from lerobot_policy_world_modality.encoders.spec import ENCODER_NAMES, EncoderSpec
from lerobot_policy_world_modality.encoders.state import StateEncoder
from lerobot_policy_world_modality.errors import InputError

ENCODERS: dict[str, Callable[..., WorldEncoder]] = {
    "dinov2": Dinov2Encoder.load,
    "vjepa2": VJEPA2Encoder.load,
    "state": StateEncoder.load,
    "learned": LearnedEncoder.load,
}
assert tuple(ENCODERS) == ENCODER_NAMES


def build_encoder(
    spec_or_name: EncoderSpec | str,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> WorldEncoder:
    """Build a world encoder from a local checkpoint folder.

    With a name, ``options`` are the encoder's load options (camera_key, input_size,
    temporal_window, pooling, dtype, render, batch_size). With a spec (e.g. from a policy
    checkpoint), the spec's own settings are used, ``checkpoint_path`` may point to where the
    weights now live, and the built encoder must reproduce the spec exactly: any difference
    (another model at the path, an option overriding the temporal window, ...) raises a ValueError
    naming both values.
    """
    if isinstance(spec_or_name, EncoderSpec):
        spec = spec_or_name
        stored = {
            k: getattr(spec, k) for k in ("camera_key", "input_size", "temporal_window", "pooling", "dtype", "render")
        }
        encoder = build_encoder(spec.name, checkpoint_path or spec.checkpoint_path, device, **{**stored, **options})
        spec.check_compatible(encoder.spec, f"building the {spec.name} encoder of a stored spec")
        return encoder
    if spec_or_name not in ENCODERS:
        raise InputError(f"unknown encoder {spec_or_name!r}; expected one of {ENCODER_NAMES}")
    if checkpoint_path is None:
        raise InputError(
            f"the {spec_or_name} encoder needs checkpoint_path: a local folder holding its config.json (and weights)"
        )
    return ENCODERS[spec_or_name](checkpoint_path, device=device, **options)
