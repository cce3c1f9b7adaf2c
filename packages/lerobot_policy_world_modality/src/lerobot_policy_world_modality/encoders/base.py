"""The world-encoder interface, the frame preprocessing every image encoder shares, and checks of
local checkpoint folders."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lerobot.utils.constants import OBS_IMAGES

from lerobot_policy_world_modality.encoders.spec import EncoderSpec, digest
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.file_digests import verify_folder

DEFAULT_CAMERA_KEY = f"{OBS_IMAGES}.corner2"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# config.json keys that record how a file was written, not what the model is.
_UNHASHED_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path"})
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

Frames = torch.Tensor | np.ndarray


class WorldEncoder(ABC):
    """A frozen encoder from observations to world latents, described by its `spec`."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device) -> None:
        self.spec = spec
        self.device = torch.device(device)

    @abstractmethod
    def encode(self, frames: Frames) -> torch.Tensor:
        """uint8 frames [B, T, H, W, 3] (T >= temporal window) -> float32 latents [B, D] on `device`."""


class ImageEncoder(WorldEncoder):
    """Shared image pipeline: keep the last m frames, resize to ``input_size`` (whole frame, no crop),
    scale to [0, 1], normalise with the encoder's mean/std, and run `_forward` in batches."""

    def __init__(
        self,
        spec: EncoderSpec,
        device: str | torch.device,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        batch_size: int,
    ) -> None:
        super().__init__(spec, device)
        if spec.input_size is None:
            raise InputError(f"image encoder {spec.name!r} needs an input_size")
        self.batch_size = batch_size
        self._mean = torch.tensor(image_mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(image_std, dtype=torch.float32, device=self.device)

    @abstractmethod
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, m, 3, S, S] -> latents [B, D]."""

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, T, H, W, 3] (any device) -> normalised float pixels [B, T, 3, S, S] on `device`."""
        b, t, h, w, _ = frames.shape
        x = preprocess_images(frames.reshape(b * t, h, w, 3), self.spec.input_size, self._mean, self._std)
        return x.reshape(b, t, *x.shape[1:])

    @torch.no_grad()
    def encode(self, frames: Frames) -> torch.Tensor:
        frames = as_frames(frames)
        m = self.spec.temporal_window
        if frames.shape[1] < m:
            raise InputError(
                f"{self.spec.name} encoder has temporal window {m} but got {frames.shape[1]} frames per sample"
            )
        frames = frames[:, frames.shape[1] - m :]
        if len(frames) == 0:
            return torch.empty(0, self.spec.output_dim, device=self.device)
        return torch.cat([self._forward(self.pixels(chunk)).float() for chunk in frames.split(self.batch_size)])


def preprocess_images(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float [N, 3, size, size] on mean's device: the whole image resized
    (bilinear, antialiased; no crop), scaled to [0, 1] and normalised per channel."""
    x = images.to(mean.device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def as_frames(frames: Frames) -> torch.Tensor:
    """Check and convert frames to a uint8 tensor [B, T, H, W, 3] (no copy where possible)."""
    t = torch.as_tensor(frames)
    if t.dtype != torch.uint8 or t.ndim != 5 or t.shape[-1] != 3:
        raise InputError(f"expected uint8 frames [B, T, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t


def config_hash(config: dict[str, Any]) -> str:
    """Hash of a model config (without its provenance keys): a different model at a path changes it."""
    return digest({k: v for k, v in config.items() if k not in _UNHASHED_CONFIG_KEYS})


def read_checkpoint_config(
    checkpoint_path: str | Path, model_type: str, *, needs_weights: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Validate a local checkpoint folder and return (resolved folder, config.json contents).

    Raises with what was expected and what was found: hub ids, missing folders, missing
    config.json, a different ``model_type`` or missing weights.
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_dir():
        hint = (
            f"{str(checkpoint_path)!r} looks like a Hugging Face hub id; nothing is downloaded: "
            "download the weights once into a local folder and pass that folder"
            if _HUB_ID.match(str(checkpoint_path)) and not path.exists()
            else f"{str(checkpoint_path)!r} is not a directory"
        )
        raise MissingFileError(f"expected a local {model_type!r} checkpoint folder (with config.json): {hint}")
    verify_folder(
        path,
        "Rebuild the encoder: delete its folder and rerun `wm latents` (the state and learned encoders are "
        "made again from the dataset)",
    )  # folders `wm latents` wrote hold their digests
    found = sorted(p.name for p in path.iterdir())
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MissingFileError(f"expected {config_file} (a {model_type!r} checkpoint folder); found files: {found}")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != model_type:
        raise InputError(f"{config_file}: expected model_type {model_type!r}, found {config.get('model_type')!r}")
    if needs_weights and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise MissingFileError(f"expected weights ({' or '.join(WEIGHT_FILES)}) in {path}; found files: {found}")
    return path.resolve(), config
