"""Defaults and valid ranges the pipeline's command line, experiment matrix and rollout runner share, in one place
and free of heavy imports (the command line offers them before any model library is loaded). Names the policy
plugin owns (memory modes, encoders, policy types) live in the plugin; simulator names in `world_modality.sim`."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from lerobot_policy_world_modality.errors import InputError


@dataclass(frozen=True)
class AtLeast:
    """The smallest valid value of an integer option: ``Annotated[int, AtLeast(1)]`` (`Count`). One declaration serves
    the matrix file's checks (`world_modality.matrix.config`), the Python API's (`check_ranges`) and the command
    line's (an instance is an argparse ``type``), so a count below its range is refused before any work, naming the
    field and the range."""

    low: int

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (None: nothing)."""
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
            return f"expected an integer >= {self.low}, got {value!r}"
        return None

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {self.low}, got {text!r}") from None
        if problem := self.problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value


COUNT = AtLeast(1)
Count = Annotated[int, COUNT]  # how many steps, episodes, workers, ...: 1 or more
NON_NEGATIVE = AtLeast(0)
NonNegative = Annotated[int, NON_NEGATIVE]


def bounds(hint: Any) -> list[AtLeast]:
    """The `AtLeast` bounds an annotation carries (through ``X | None``)."""
    if typing.get_origin(hint) is Annotated:
        return [m for m in hint.__metadata__ if isinstance(m, AtLeast)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [b for arg in typing.get_args(hint) for b in bounds(arg)]
    return []


def check_ranges(target: Any, values: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the first of ``values`` (name -> value) outside the range its annotation in
    ``target`` (a dataclass or a function) gives; None passes (an optional option left unset)."""
    ranges = _ranges(target)
    for name, value in values.items():
        for bound in ranges.get(name, ()):
            if value is not None and (problem := bound.problem(value)):
                raise InputError(f"{name}: {problem}")


@cache
def _ranges(target: Any) -> dict[str, list[AtLeast]]:
    return {
        name: found
        for name, hint in typing.get_type_hints(target, include_extras=True).items()
        if (found := bounds(hint))
    }


@dataclass(frozen=True)
class EvalDefaults:
    """The defaults of a closed-loop evaluation (`wm eval`, the matrix's ``evaluation`` section,
    `world_modality.rollout.evaluate_checkpoint`)."""

    episodes_per_task: Count = 10
    eval_seed: NonNegative = (
        1000  # first seed of the evaluation scenes, far from the seeds datasets are generated from (0, 1, ...)
    )
    workers: Count = 2  # simulator processes
    groups: Count = 1  # pipelined lockstep groups of the workers
    videos_per_task: NonNegative = 0
    max_steps: Count | None = None  # None: the simulator's episode limit


EVAL = EvalDefaults()


@dataclass(frozen=True)
class TrainDefaults:
    """The defaults of a training run (`wm train`, `world_modality.training.trainer.TrainOptions`, a matrix arm); a
    resumed run keeps its own instead (`world_modality.training.checkpoint.resumed_options`)."""

    policy_type: str = "world_transformer"
    model_type: str | None = None  # world_transformer only; None: F
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0


TRAIN = TrainDefaults()
