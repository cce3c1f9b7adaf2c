"""Pretrained transformers encoders loaded from local folders: DINOv2 (images) and V-JEPA 2 (clips)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import Dinov2Model, PreTrainedModel, VJEPA2Model
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from lerobot_policy_world_modality.encoders.base import (
    DEFAULT_CAMERA_KEY,
    ImageEncoder,
    config_hash,
    read_checkpoint_config,
)
from lerobot_policy_world_modality.encoders.spec import EncoderSpec
from lerobot_policy_world_modality.errors import InputError

_PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


def _preprocessor_config(path: Path) -> dict[str, Any]:
    """The folder's (video) preprocessor config, or {} when it has none."""
    for name in _PREPROCESSOR_FILES:
        if (path / name).is_file():
            return json.loads((path / name).read_text())
    return {}


def _crop_side(preprocessor: dict[str, Any]) -> int | None:
    crop = preprocessor.get("crop_size")
    return crop["height"] if isinstance(crop, dict) else crop


def _load_weights(model_class: type[PreTrainedModel], path: Path) -> PreTrainedModel:
    """The model of a local folder; a weights file that does not load is an error naming the folder."""
    try:
        return model_class.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise InputError(
            f"the weights in {path} do not load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            f"the file is damaged or incomplete; copy the model folder again from its source"
        ) from e


class _PretrainedEncoder(ImageEncoder):
    """A transformers model in eval mode, normalised with its preprocessor's mean/std (ImageNet's by default)."""

    def __init__(
        self,
        model: PreTrainedModel,
        spec: EncoderSpec,
        device: str | torch.device,
        preprocessor: dict[str, Any],
        batch_size: int,
    ) -> None:
        super().__init__(
            spec,
            device,
            preprocessor.get("image_mean", IMAGENET_DEFAULT_MEAN),
            preprocessor.get("image_std", IMAGENET_DEFAULT_STD),
            batch_size,
        )
        self.model = model.to(self.device).eval()


class Dinov2Encoder(_PretrainedEncoder):
    """DINOv2 on the last frame; CLS token or mean of the patch tokens (final layer norm applied)."""

    @classmethod
    def load(
        cls,
        checkpoint_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        camera_key: str = DEFAULT_CAMERA_KEY,
        input_size: int | None = None,
        temporal_window: int = 1,
        pooling: str = "cls",
        dtype: str = "float16",
        render: dict[str, Any] | None = None,
        batch_size: int = 64,
    ) -> Dinov2Encoder:
        """Load from a local folder; ``input_size`` defaults to the preprocessor's crop size, else the config's image size."""
        path, config = read_checkpoint_config(checkpoint_path, "dinov2")
        if temporal_window != 1:
            raise InputError(f"dinov2 is an image encoder: temporal_window must be 1, got {temporal_window}")
        if pooling not in ("cls", "mean"):
            raise InputError(f"dinov2 pooling must be 'cls' or 'mean', got {pooling!r}")
        preprocessor = _preprocessor_config(path)
        size = input_size or _crop_side(preprocessor) or config["image_size"]
        if size % config["patch_size"]:
            raise InputError(f"dinov2 input_size {size} is not a multiple of the patch size {config['patch_size']}")
        spec = EncoderSpec(
            name="dinov2",
            checkpoint_path=str(path),
            config_hash=config_hash(config),
            camera_key=camera_key,
            input_size=size,
            pooling=pooling,
            output_dim=config["hidden_size"],
            temporal_window=1,
            dtype=dtype,
            render=render or {},
        )
        model = _load_weights(Dinov2Model, path)
        return cls(model, spec, device, preprocessor, batch_size)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels[:, -1]).last_hidden_state
        return tokens[:, 0] if self.spec.pooling == "cls" else tokens[:, 1:].mean(dim=1)


class VJEPA2Encoder(_PretrainedEncoder):
    """V-JEPA 2 encoder on a clip of the last m frames, mean-pooled over its output tokens."""

    @classmethod
    def load(
        cls,
        checkpoint_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        camera_key: str = DEFAULT_CAMERA_KEY,
        input_size: int | None = None,
        temporal_window: int = 4,
        pooling: str = "mean",
        dtype: str = "float16",
        render: dict[str, Any] | None = None,
        batch_size: int = 16,
    ) -> VJEPA2Encoder:
        """Load from a local folder; m must be a multiple of the tubelet size, at most frames_per_clip,
        and input_size must equal the model's crop size (its rotary positions assume that grid)."""
        path, config = read_checkpoint_config(checkpoint_path, "vjepa2")
        tubelet, max_frames, crop = config["tubelet_size"], config["frames_per_clip"], config["crop_size"]
        if temporal_window % tubelet or not tubelet <= temporal_window <= max_frames:
            raise InputError(
                f"{path}: V-JEPA 2 has tubelet_size={tubelet} and frames_per_clip={max_frames}: temporal_window must "
                f"be a multiple of {tubelet} between {tubelet} and {max_frames}, got {temporal_window}"
            )
        if input_size not in (None, crop):
            raise InputError(f"{path}: V-JEPA 2 input_size must equal its crop_size {crop}, got {input_size}")
        if pooling != "mean":
            raise InputError(f"vjepa2 pooling must be 'mean' (it has no CLS token), got {pooling!r}")
        spec = EncoderSpec(
            name="vjepa2",
            checkpoint_path=str(path),
            config_hash=config_hash(config),
            camera_key=camera_key,
            input_size=crop,
            pooling="mean",
            output_dim=config["hidden_size"],
            temporal_window=temporal_window,
            dtype=dtype,
            render=render or {},
        )
        model = _load_weights(VJEPA2Model, path)
        return cls(model, spec, device, _preprocessor_config(path), batch_size)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state.mean(dim=1)
