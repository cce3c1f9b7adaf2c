"""What every simulator package provides (docs/ARCHITECTURE.md, How to add a simulator), and the episode,
observation and env-adapter types the rollout runner exchanges with it.

A simulator package ``world_modality/sim/<name>/`` defines a `Simulator` subclass, exposes one instance as
``SIMULATOR`` in its ``__init__`` and is listed by name in `world_modality.sim`. Its ``__init__`` imports no
simulator library: the package is imported to answer questions about names, tasks and datasets, and the
simulator itself (MuJoCo, LIBERO) only when an env is built.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lerobot_policy_world_modality.errors import InputError

if TYPE_CHECKING:
    from world_modality.data.check import DatasetKeys, DatasetSummary


@dataclass(frozen=True)
class EpisodeSpec:
    """One evaluation episode, identical for every arm: ``suite`` is the simulator's episode family (a
    LIBERO suite, or the simulator's name), ``layout`` the scene's index (an MT1 layout, a LIBERO init state)."""

    suite: str
    task: str
    seed: int
    layout: int

    @property
    def episode_id(self) -> str:
        return f"{self.suite}|{self.task}|{self.seed}|{self.layout}"

    def to_dict(self) -> dict:
        return asdict(self) | {"episode_id": self.episode_id}

    def rollout_seed(self, train_seed: int) -> int:
        """Seed of this episode's random draws at rollout (memory controls `random` / `shuffle`, flow noise): a
        function of the episode and the training seed alone, so every run (any batch, worker count, shard or
        resume) draws the same."""
        digest = hashlib.sha256(f"{self.episode_id}|train_seed={train_seed}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63


@dataclass(frozen=True)
class EpisodeRequest:
    """What an evaluation asks of a simulator's episode list. Every arm asking the same gets the same list."""

    tasks: str | list[str] | None  # None: the tasks the policy was trained on
    episodes_per_task: int
    eval_seed: int
    suite: str | None = None
    allow_train_layouts: bool = False  # also evaluate on scenes the training data used
    dataset: Path | None = None  # the policy's training dataset, when known
    instructions: tuple[str, ...] = ()  # the instructions the policy was trained on


@dataclass(frozen=True)
class PolicyInterface:
    """What a checkpoint's config says it exchanges with a simulator, known before any weights load: checked
    (`Simulator.check_policy`) before any simulator process starts."""

    checkpoint: str  # for messages
    render: dict | None  # its encoder spec's render record (None: it reads no camera)
    state_dim: int | None  # the proprio state it reads (None: none)
    action_dim: int | None

    def check_dims(self, simulator: str, state_dim: int, action_dim: int) -> None:
        """Refuse a policy whose state or action size differs from the simulator's."""
        diffs = [
            f"its {role} has {found} dims, the simulator's {expected}"
            for role, found, expected in (("state", self.state_dim, state_dim), ("action", self.action_dim, action_dim))
            if found is not None and found != expected
        ]
        if diffs:
            raise InputError(
                f"checkpoint {self.checkpoint} does not fit the {simulator} simulator: {'; '.join(diffs)}. "
                "Evaluate it on the simulator its training data came from (--env)"
            )


class RenderSettings(Protocol):
    """What a simulator renders for a policy; recorded in the encoder spec's ``render`` (``to_dict``)."""

    simulator: str
    cameras: tuple[str, ...]
    width: int
    height: int

    def to_dict(self) -> dict: ...


# Observations cross the worker pipe as plain numpy:
# {"frames": {camera: uint8 [H, W, 3]}, "state": float32 [S], "env_state": float32 [E]}.
Observation = dict[str, Any]


class EnvAdapter(ABC):
    """A simulator worker's env: the env of the current episode's task is kept and rebuilt only when an
    episode needs another (building one costs seconds)."""

    def __init__(self, render: RenderSettings | None):
        self.render = render
        self._env: Any = None
        self._env_key: tuple | None = None

    @abstractmethod
    def _env_for(self, episode: EpisodeSpec) -> tuple[tuple, Callable[[], Any]]:
        """What identifies the env ``episode`` needs, and how to build it."""

    @abstractmethod
    def _observation(self, raw: Any) -> Observation:
        """The env's raw observation as the runner's `Observation`."""

    def reset(self, episode: EpisodeSpec) -> Observation:
        key, build = self._env_for(episode)
        if self._env is None or self._env_key != key:
            self.close()
            self._env, self._env_key = build(), key
        return self._observation(self._env.reset(episode.layout))

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        raw, success, done = self._env.step(action)
        return self._observation(raw), success, done

    def peek(self, actions: np.ndarray) -> np.ndarray:
        """Future env states [K, E] under actions [K, A], the episode left as it was (oracle memory)."""
        raise NotImplementedError(f"{type(self).__name__} cannot peek at the simulator's future")

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env, self._env_key = None, None


class Simulator(ABC):
    """One simulator: its names, render settings, episodes, env adapter, datasets and task groups."""

    name: str
    title: str  # how reports name it (e.g. a heading of its task groups)
    suites: tuple[str, ...] = ()  # the suites an evaluation chooses from (`wm eval --suite`); () for none
    # The rollout worker's env adapter (a class), built with the render settings (None: state only, no camera).
    adapter: Callable[[RenderSettings | None], EnvAdapter]
    # The function that writes a LeRobot dataset from this simulator: ``(out, **its own keywords)``.
    dataset_generator: Callable[..., Any]
    # The sizes of the proprio state it gives a policy and of the action it takes.
    state_dim: int
    action_dim: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [
            attribute
            for attribute in ("name", "title", "adapter", "dataset_generator", "state_dim", "action_dim")
            if not hasattr(cls, attribute)
        ]
        if missing:
            raise TypeError(f"the simulator {cls.__name__} does not set {', '.join(missing)}")

    # --- render settings -------------------------------------------------------------------------------

    @abstractmethod
    def owns_render(self, record: dict) -> bool:
        """Whether a render record (an encoder spec's ``render``) is this simulator's."""

    @abstractmethod
    def render_from_dict(self, record: dict) -> RenderSettings:
        """The render settings of one of this simulator's render records."""

    # --- episodes and envs -----------------------------------------------------------------------------

    @abstractmethod
    def owns_suite(self, suite: str) -> bool:
        """Whether an `EpisodeSpec.suite` (and an episode record's ``suite``) is this simulator's."""

    @abstractmethod
    def check_suite(self, suite: str | None) -> None:
        """Raise a ValueError naming the choices unless ``suite`` is one an evaluation of this simulator accepts."""

    @abstractmethod
    def parse_tasks(self, tasks: str | list[str]) -> list[str]:
        """A task list as given by a user (comma-separated or a list), in this simulator's naming, checked as
        far as possible without building an env."""

    @abstractmethod
    def evaluation_episodes(self, request: EpisodeRequest) -> list[EpisodeSpec]:
        """The paired episode list of an evaluation."""

    @abstractmethod
    def instruction(self, episode: EpisodeSpec) -> str:
        """The instruction a policy is given for an episode's task."""

    # --- datasets ----------------------------------------------------------------------------------------

    @abstractmethod
    def dataset_complete(self, root: Path) -> bool:
        """Whether ``root`` holds a finished dataset written by `dataset_generator`."""

    @abstractmethod
    def dataset_tasks(self, root: Path, suite: str | None = None) -> list[str] | None:
        """The tasks (of ``suite``, for a simulator with suites) a dataset holds demos of: the default evaluation tasks
        of a policy trained on it (None when the data does not say)."""

    @abstractmethod
    def looks_like_own(self, root: Path, features: dict) -> bool:
        """Whether a dataset looks like this simulator's, from its files alone (cheap; nothing is rendered)."""

    @abstractmethod
    def check_dataset(self, summary: DatasetSummary, keys: DatasetKeys) -> dict | None:
        """This simulator's checks of a dataset that looks like its own (raising DatasetSchemaError); returns
        the dataset's render record, or None when the data turns out not to be this simulator's."""

    # --- policies ----------------------------------------------------------------------------------------

    def check_policy(self, policy: PolicyInterface) -> None:
        """Raise a ValueError saying what does not fit when a checkpoint cannot run in this simulator: cameras and
        image size it cannot render (`render_from_dict` validates them), state and action sizes other than its
        ``state_dim`` / ``action_dim``. Cheap: no env is built."""
        if policy.render is not None:
            self.render_from_dict(policy.render)
        policy.check_dims(self.name, self.state_dim, self.action_dim)

    # --- reports -----------------------------------------------------------------------------------------

    @abstractmethod
    def task_groups(self) -> dict[str, tuple[str, ...]]:
        """Task groups for the report's rollup (group -> task names, in report order); {} for none."""
