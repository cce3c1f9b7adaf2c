"""The privileged-state "encoder": MetaWorld's environment state, standardised with dataset statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.utils.constants import OBS_ENV_STATE

from lerobot_policy_world_modality.encoders.base import Frames, WorldEncoder, config_hash, read_checkpoint_config
from lerobot_policy_world_modality.encoders.spec import EncoderSpec
from lerobot_policy_world_modality.errors import InputError

STATE_MODEL_TYPE = "wm_state_encoder"
_MIN_STD = 1e-6  # dimensions that never vary (e.g. an absent second object) are centred, not scaled


def fit_state_encoder(
    states: np.ndarray | torch.Tensor, out_dir: str | Path, *, state_key: str = OBS_ENV_STATE
) -> Path:
    """Fit per-dimension mean/std on dataset states [N, D] and write them as an encoder folder."""
    x = torch.as_tensor(states, dtype=torch.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"expected states [N >= 2, D], got {tuple(x.shape)}")
    std = x.std(dim=0)
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": STATE_MODEL_TYPE,
        "state_key": state_key,
        "state_dim": x.shape[1],
        "num_samples": len(x),
        "mean": x.mean(dim=0).tolist(),
        "std": std.tolist(),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


class StateEncoder(WorldEncoder):
    """Latent = (state - mean) / std, D = state dimension; it encodes states, not frames."""

    def __init__(self, spec: EncoderSpec, device: str | torch.device, mean: list[float], std: list[float]) -> None:
        super().__init__(spec, device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)

    @classmethod
    def load(
        cls,
        checkpoint_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        camera_key: str | None = None,
        input_size: None = None,
        temporal_window: int = 1,
        pooling: None = None,
        dtype: str = "float16",
        render: dict[str, Any] | None = None,
    ) -> StateEncoder:
        """Load statistics written by `fit_state_encoder`; image options must stay unset."""
        path, config = read_checkpoint_config(checkpoint_path, STATE_MODEL_TYPE, needs_weights=False)
        if camera_key not in (None, config["state_key"]):
            raise InputError(f"{path}: state statistics were fitted on {config['state_key']!r}, not {camera_key!r}")
        if (input_size, pooling, temporal_window) != (None, None, 1):
            raise InputError(
                "the state encoder takes no input_size or pooling and a temporal_window of 1, got "
                f"input_size={input_size}, pooling={pooling!r}, temporal_window={temporal_window}"
            )
        spec = EncoderSpec(
            name="state",
            checkpoint_path=str(path),
            config_hash=config_hash(config),
            camera_key=config["state_key"],
            input_size=None,
            pooling=None,
            output_dim=config["state_dim"],
            temporal_window=1,
            dtype=dtype,
            render=render or {},
        )
        return cls(spec, device, config["mean"], config["std"])

    def encode(self, frames: Frames) -> torch.Tensor:
        raise TypeError(
            f"the state encoder encodes {self.spec.camera_key} vectors, not frames: call encode_state(states [B, {self.spec.output_dim}])"
        )

    @torch.no_grad()
    def encode_state(self, states: np.ndarray | torch.Tensor) -> torch.Tensor:
        """States [B, D] -> standardised float32 latents [B, D] on `device`."""
        x = torch.as_tensor(states).to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.output_dim:
            raise InputError(f"expected states [B, {self.spec.output_dim}], got {tuple(x.shape)}")
        return (x - self._mean) / self._std
