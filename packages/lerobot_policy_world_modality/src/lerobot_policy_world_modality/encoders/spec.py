"""`EncoderSpec`: the serialisable identity of a world encoder, stored with latents and checkpoints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from lerobot_policy_world_modality.errors import InputError


@dataclass(frozen=True)
class EncoderKind:
    """What an encoder reads and where its weights come from: the code asks this instead of comparing names."""

    reads_states: bool = False  # a vector observation (the environment state), not camera frames
    fits_on_dataset: bool = False  # without a checkpoint folder, `wm latents` fits or trains it on the dataset


ENCODER_KINDS = {
    "dinov2": EncoderKind(),
    "vjepa2": EncoderKind(),
    "state": EncoderKind(reads_states=True, fits_on_dataset=True),  # standardised states, statistics fitted
    "learned": EncoderKind(fits_on_dataset=True),  # a small CNN trained on the dataset's frames
}
ENCODER_NAMES = tuple(ENCODER_KINDS)
STORAGE_DTYPES = ("float16", "bfloat16", "float32")
# Where the weights live is not part of an encoder's identity (config_hash is): moving a folder
# neither invalidates cached latents nor makes a checkpoint incompatible.
_LOCATION_FIELDS = frozenset({"checkpoint_path"})


# wrist_mode=concat: the encoder reads two cameras side by side (left | right) as one virtual camera, named
# "<left key>+<right camera>", e.g. "observation.images.image+image2" (agentview | wrist). The latent cache,
# the spec's camera_key and the rollout's frames (the env renders the same virtual camera) all use that name.
CONCAT_SEPARATOR = "+"


def concat_camera_key(image_key: str, wrist_key: str) -> str:
    """The virtual camera key of ``image_key`` and ``wrist_key`` side by side."""
    return f"{image_key}{CONCAT_SEPARATOR}{wrist_key.rsplit('.', 1)[-1]}"


def camera_parts(camera_key: str) -> list[str]:
    """The dataset keys a camera key reads: itself, or the left and right keys of a concat key."""
    if CONCAT_SEPARATOR not in camera_key:
        return [camera_key]
    left, right = camera_key.split(CONCAT_SEPARATOR)
    return [left, f"{left.rsplit('.', 1)[0]}.{right}" if "." in left else right]


def side_by_side(left: Any, right: Any) -> Any:
    """Frames [..., H, W, 3] of two cameras -> [..., H, 2W, 3] (numpy or torch), left | right."""
    if left.shape != right.shape:
        raise InputError(
            f"side-by-side cameras must have the same frame shape, got {tuple(left.shape)} and {tuple(right.shape)}"
        )
    return np.concatenate([left, right], axis=-2) if isinstance(left, np.ndarray) else torch.cat([left, right], dim=-2)


def encoder_kind(name: str) -> EncoderKind:
    """The kind of the encoder named ``name``."""
    if name not in ENCODER_KINDS:
        raise InputError(f"unknown encoder name {name!r}; expected one of {ENCODER_NAMES}")
    return ENCODER_KINDS[name]


def encoder_input_shape(features: dict[str, dict], camera_key: str) -> tuple[int, ...]:
    """The shape of what the encoder reads: the dataset feature's, or (H, 2W, 3) for a concat key."""
    shapes = [tuple(features[key]["shape"]) for key in camera_parts(camera_key)]
    return shapes[0] if len(shapes) == 1 else (shapes[0][0], shapes[0][1] + shapes[1][1], *shapes[0][2:])


def digest(obj: Any, length: int = 16) -> str:
    """Short sha256 hex digest of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class EncoderSpec:
    """What produced a world latent: encoder, weights, input and output conventions.

    ``camera_key`` is the dataset key the encoder reads (``observation.environment_state`` for the
    state encoder); ``input_size`` is the square side frames are resized to (``None`` for state);
    ``temporal_window`` is the number of frames m per latent; ``dtype`` is the storage dtype of
    cached latents; ``render`` holds the source data's render settings.
    """

    name: str
    checkpoint_path: str | None
    config_hash: str
    camera_key: str
    input_size: int | None
    pooling: str | None
    output_dim: int
    temporal_window: int = 1
    dtype: str = "float16"
    render: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        encoder_kind(self.name)  # refuses an unknown name
        if self.dtype not in STORAGE_DTYPES:
            raise InputError(f"unknown storage dtype {self.dtype!r}; expected one of {STORAGE_DTYPES}")
        if self.temporal_window < 1:
            raise InputError(f"temporal_window must be >= 1, got {self.temporal_window}")
        if self.output_dim < 1:
            raise InputError(f"output_dim must be >= 1, got {self.output_dim}")
        # Canonical, JSON-safe copy (tuples become lists), so equality and hashes survive a round trip.
        object.__setattr__(self, "render", json.loads(json.dumps(dict(self.render), sort_keys=True)))

    def __hash__(self) -> int:
        return hash(self.spec_hash())

    @property
    def reads_states(self) -> bool:
        """Whether the encoder reads a vector observation (``camera_key`` names the state), not camera frames."""
        return encoder_kind(self.name).reads_states

    @property
    def torch_dtype(self) -> torch.dtype:
        """The storage dtype as a torch dtype."""
        return getattr(torch, self.dtype)

    def to_storage(self, z: torch.Tensor) -> torch.Tensor:
        """Latents in the storage dtype, as the cache holds them and rollouts see them. Values beyond the dtype's
        range saturate at its largest finite value instead of becoming inf: float16 ends at 65504, which a state
        dimension standardised by a near-zero training std reaches on a small shift. NaN stays NaN (a rollout stops
        the episode that meets one; `wm latents` refuses it)."""
        limit = torch.finfo(self.torch_dtype).max
        return z.clamp(-limit, limit).to(self.torch_dtype)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        """Inverse of `to_dict`; unknown or missing keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown EncoderSpec fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that define which latents this encoder produces (all but the weights' location)."""
        return {k: v for k, v in self.to_dict().items() if k not in _LOCATION_FIELDS}

    def spec_hash(self) -> str:
        """Stable short hash of `identity`."""
        return digest(self.identity())

    def check_compatible(self, other: EncoderSpec, context: str) -> None:
        """Raise ValueError naming both values of every identity field where ``other`` differs.

        ``self`` is the expected spec (e.g. the one stored in a checkpoint), ``other`` the one found
        or requested; ``context`` says where the check happens.
        """
        expected, found = self.identity(), other.identity()
        diffs = [f"{k}: expected {expected[k]!r}, got {found[k]!r}" for k in expected if expected[k] != found[k]]
        if diffs:
            raise InputError(f"{context}: encoder spec mismatch: " + "; ".join(diffs))
