"""World-memory mode names: one set for training, validation, `wm intervene`, rollouts and reports.

Kept free of torch so the command line can offer them as choices without importing it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NoReturn

from lerobot_policy_world_modality.errors import InputError


class _StrictStrEnum(StrEnum):
    """A StrEnum whose unknown values raise an error listing every valid name."""

    @classmethod
    def _missing_(cls, value: object) -> NoReturn:
        valid = ", ".join(repr(member.value) for member in cls)
        raise InputError(f"unknown {cls.__name__} {value!r}; valid names: {valid}")


class MemoryMode(_StrictStrEnum):
    """What the gated cross-attention reads; one set of names for training, validation and rollout.

    `zero` alone is a weak control (it shifts the input distribution); `random`, `signflip`, `shuffle` and
    `other` keep memory-like statistics, so only they show whether the *content* matters.
    """

    PRED = "pred"  # the Prophet's prediction
    ZERO = "zero"  # zeros
    RANDOM = "random"  # Gaussian noise with the prediction's per-feature mean/std
    SIGNFLIP = "signflip"  # the prediction negated
    SHUFFLE = "shuffle"  # another sample's (or, for a sample on its own, as at rollout, another step's) prediction
    ORACLE = "oracle"  # the true future latents
    # Another episode's prediction: the Prophet's, from the latent history of a held-out frame drawn per sample
    # (`WorldModule.use_memory_bank`). The across-episode content control at rollout, where `shuffle` and
    # `random` see one episode only and keep its content.
    OTHER = "other"
    NONE = "none"  # no injection: the baseline path


class MemorySource(_StrictStrEnum):
    """Which latents fill the `pred` memory during training."""

    PREDICTED = "predicted"
    ORACLE = "oracle"
    SCHEDULED = "scheduled"  # oracle, annealed linearly to predicted


# Modes a rollout or evaluation may force on a world-memory policy (`none` is the baseline's own path).
ROLLOUT_MODES = tuple(m.value for m in MemoryMode if m is not MemoryMode.NONE)
# Controls compared against `pred` by `wm intervene` (offline, `shuffle` already gives another sample's memory).
INTERVENTION_MODES = tuple(m for m in ROLLOUT_MODES if m not in (MemoryMode.PRED, MemoryMode.OTHER))
