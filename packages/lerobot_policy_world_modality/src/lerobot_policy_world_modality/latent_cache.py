"""Reading a world-latent cache (written by the pipeline's `wm latents`): verified on load, served to
training and to the policies as history/future windows without decoding images.

A cache folder holds ``latents.safetensors`` (``z`` [N, D] in the spec's storage dtype, ``episode_index``
and ``frame_index`` [N]; row = global frame index) and ``spec.json`` (the encoder spec, its hash, the
dataset fingerprint, frame count and dim, the latents file's size and sha256), written last as the completion marker.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from lerobot_policy_world_modality.dataset_files import dataset_fingerprint, dataset_info
from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.file_digests import DamagedFileError, verify_files
from lerobot_policy_world_modality.world.history import (
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)

LATENTS_FILE = "latents.safetensors"
SPEC_FILE = "spec.json"
DIGESTS_KEY = "file_digests"  # in spec.json: the latents file's size and digest (caches written before it: none)
RECOMPUTE = "Recompute the cache: rerun the `wm latents` command that made it (it rebuilds a damaged cache)"


class LatentCacheMismatch(InputError):
    """A latent cache does not belong to the dataset or encoder it is used with."""


def tensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


@dataclass
class LatentWindows:
    """Latent context and targets around frames t (float32; masks True where the frame is real)."""

    z_history: torch.Tensor  # [B, T, D]: z_{t-T+1..t}; before the episode start, the first frame's latent
    history_mask: torch.Tensor  # [B, T] bool
    z_future: torch.Tensor  # [B, K, D]: z_{t+1..t+K}; past the episode end, the last frame's latent
    future_mask: torch.Tensor  # [B, K] bool

    def as_batch(self) -> dict[str, torch.Tensor]:
        """Under the batch keys every policy family reads."""
        return {
            WORLD_LATENTS: self.z_history,
            WORLD_LATENTS_MASK: self.history_mask,
            WORLD_FUTURE: self.z_future,
            WORLD_FUTURE_MASK: self.future_mask,
        }


class LatentCache:
    """A verified latent cache in memory (cpu, or the training device after `to`): ``z`` [N, D] (storage
    dtype), row = global frame index."""

    def __init__(
        self,
        path: Path,
        spec: EncoderSpec,
        dataset_fingerprint: str,
        z: torch.Tensor,
        episode_index: np.ndarray,
        frame_index: np.ndarray,
    ) -> None:
        self.path = path
        self.spec = spec
        self.dataset_fingerprint = dataset_fingerprint
        self.z = z
        self.episode_index = episode_index
        self.frame_index = frame_index
        starts = np.flatnonzero(frame_index == 0)
        self.episode_bounds = np.stack([starts, np.append(starts[1:], len(z))], axis=1)  # [E, 2] (start, end)
        lengths = self.episode_bounds[:, 1] - self.episode_bounds[:, 0]
        self._start = torch.from_numpy(np.repeat(self.episode_bounds[:, 0], lengths))
        self._end = torch.from_numpy(np.repeat(self.episode_bounds[:, 1], lengths))

    @classmethod
    def load(
        cls, path: str | Path, dataset: str | Path | None = None, expect_spec: EncoderSpec | None = None
    ) -> LatentCache:
        """Load and verify a cache folder: its files agree with each other, and with ``dataset``
        (frame count, fingerprint) and ``expect_spec`` when given; every mismatch names both values."""
        path = Path(path).expanduser()
        if not (path / SPEC_FILE).is_file() or not (path / LATENTS_FILE).is_file():
            found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such folder"
            raise MissingFileError(
                f"{path} is not a complete latent cache (expected {SPEC_FILE} and {LATENTS_FILE}; found: {found}); make one with `wm latents`"
            )
        meta = json.loads((path / SPEC_FILE).read_text())
        spec = EncoderSpec.from_dict(meta["encoder"])
        cls.verify(path, meta)
        try:
            tensors = load_file(path / LATENTS_FILE)
        except SafetensorError as e:
            raise DamagedFileError(
                f"{path / LATENTS_FILE} does not load ({e}): the file is damaged. {RECOMPUTE}."
            ) from None
        z = tensors["z"]
        checks = [
            ("spec hash (spec.json vs its encoder spec)", meta["spec_hash"], spec.spec_hash()),
            (
                f"spec hash ({LATENTS_FILE} vs spec.json)",
                tensors_metadata(path / LATENTS_FILE).get("spec_hash"),
                meta["spec_hash"],
            ),
            ("frames (latents vs spec.json)", len(z), meta["num_frames"]),
            ("dim (latents vs encoder spec)", z.shape[1], spec.output_dim),
            ("dtype (latents vs encoder spec)", str(z.dtype).removeprefix("torch."), spec.dtype),
        ]
        if dataset is not None:
            reader_info = dataset_info(dataset)
            checks += [
                ("frames (cache vs dataset)", meta["num_frames"], int(reader_info["total_frames"])),
                ("dataset fingerprint (cache vs dataset)", meta["dataset_fingerprint"], dataset_fingerprint(dataset)),
            ]
        diffs = [f"{what}: {a!r} vs {b!r}" for what, a, b in checks if a != b]
        if diffs:
            raise LatentCacheMismatch(
                f"latent cache {path} does not match: " + "; ".join(diffs) + ". Recompute it with `wm latents`."
            )
        if expect_spec is not None:
            expect_spec.check_compatible(spec, f"latent cache {path}")
        return cls(
            path, spec, meta["dataset_fingerprint"], z, tensors["episode_index"].numpy(), tensors["frame_index"].numpy()
        )

    @staticmethod
    def verify(path: Path, meta: dict) -> None:
        """The latents file against the size and digest its spec.json recorded (`DamagedFileError` naming it)."""
        verify_files(path, meta.get(DIGESTS_KEY, {}), RECOMPUTE)

    def __len__(self) -> int:
        return len(self.z)

    def to(self, device: torch.device | str) -> LatentCache:
        """This cache with its latents and episode bounds on ``device``: `windows` then gathers there."""
        moved = copy.copy(self)
        moved.z, moved._start, moved._end = self.z.to(device), self._start.to(device), self._end.to(device)
        return moved

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def windows(self, indices: torch.Tensor, history_len: int, num_future: int) -> LatentWindows:
        """History z_{t-T+1..t} and future z_{t+1..t+K} for frames t = ``indices`` [B], clamped to
        each frame's episode, with masks saying which positions are real; one gather each, on the cache's
        device (the indices are checked on the cpu)."""
        if history_len < 1 or num_future < 0:
            raise InputError(f"history_len must be >= 1 and num_future >= 0, got {history_len} and {num_future}")
        t = torch.as_tensor(indices, dtype=torch.long).cpu()
        if t.ndim != 1 or (len(t) and (t.min() < 0 or t.max() >= len(self))):
            raise IndexError(
                f"indices must be a 1-D tensor of frame indices in [0, {len(self)}), got {t.tolist() if t.numel() < 10 else tuple(t.shape)}"
            )
        t = t.to(self.z.device)
        start, end = self._start[t].unsqueeze(1), self._end[t].unsqueeze(1)
        history = t.unsqueeze(1) + torch.arange(1 - history_len, 1, device=t.device)
        future = t.unsqueeze(1) + torch.arange(1, num_future + 1, device=t.device)
        return LatentWindows(
            z_history=self.z[torch.maximum(history, start)].float(),
            history_mask=history >= start,
            z_future=self.z[torch.minimum(future, end - 1)].float(),
            future_mask=future < end,
        )

    def describe(self) -> str:
        """A few lines for the command line."""
        s = self.spec
        return "\n".join(
            [
                f"encoder     {s.name}  (spec {s.spec_hash()}, checkpoint {s.checkpoint_path})",
                f"input       {s.camera_key}"
                + (f"  {s.input_size}px, window {s.temporal_window}, pooling {s.pooling}" if s.input_size else ""),
                f"latents     {len(self)} frames x {self.dim} dims, {s.dtype}",
                f"episodes    {len(self.episode_bounds)}",
                f"dataset     fingerprint {self.dataset_fingerprint}",
            ]
        )
