"""Built simulator envs kept inside a worker process, so later episodes and later evaluations of the
same tasks reset an env instead of building one (MetaWorld: ~2-3 s for an MT1 task's 50 layouts).

A simulator adapter holds one env for one (suite, task, seed); `EnvCache` keeps up to ``capacity``
adapters, one per key, and resets the one of each episode's key to the episode's layout. Memory bounds the
capacity: a rendering MetaWorld env holds ~150 MB in a Mesa EGL process (measured, 128 px). When full,
the most recently used adapter is replaced, not the least: evaluations walk the same task-ordered
episode list, so each worker meets its tasks in the same order every time, and keeping the envs it built
first (while the last slot turns over) lets the next evaluation start on envs that are already built;
least-recently-used eviction would have evicted exactly those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from lerobot_policy_world_modality.errors import InputError

if TYPE_CHECKING:
    from world_modality.sim.base import EnvAdapter, EpisodeSpec, Observation

DEFAULT_ENVS_PER_WORKER = 4


class EnvCache:
    """An `EnvAdapter` over several built envs of one worker, keyed by (suite, task, seed)."""

    def __init__(self, make_adapter: Callable[[], EnvAdapter], capacity: int = DEFAULT_ENVS_PER_WORKER):
        if capacity < 1:
            raise InputError(f"envs per worker must be at least 1, got {capacity}")
        self._make_adapter, self.capacity = make_adapter, capacity
        self._adapters: dict[tuple[str, str, int], EnvAdapter] = {}
        self._current: EnvAdapter | None = None
        self.builds = 0  # adapters made, each builds its env once: envs built by this worker

    def reset(self, episode: EpisodeSpec) -> Observation:
        key = (episode.suite, episode.task, episode.seed)
        adapter = self._adapters.get(key)
        if adapter is None:
            if len(self._adapters) >= self.capacity and self._current is not None:
                self._evict(self._current)
            adapter = self._adapters[key] = self._make_adapter()
            self.builds += 1
        self._current = adapter
        return adapter.reset(episode)

    def _evict(self, adapter: EnvAdapter) -> None:
        self._adapters = {k: a for k, a in self._adapters.items() if a is not adapter}
        adapter.close()

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        return self._active().step(action)

    def peek(self, actions: np.ndarray) -> np.ndarray:
        return self._active().peek(actions)

    def env_builds(self, _: Any = None) -> int:
        """Envs this worker has built so far (a pool command: ``EnvPool.env_builds``)."""
        return self.builds

    def _active(self) -> EnvAdapter:
        if self._current is None:
            raise RuntimeError("no episode has been reset in this worker yet")
        return self._current

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters, self._current = {}, None
