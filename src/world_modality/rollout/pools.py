"""Simulator pools shared by the evaluations of one process (a matrix's, one after another).

Starting a pool costs its processes' imports and every task's env construction (~50 s for 32
processes on a 16-core machine); `EnvPools` starts one per (simulator, render settings, size) on first
use and hands the same started processes, with the envs they have built, to every later evaluation
that asks for that key. Each evaluation still runs its own policy and lockstep groups over the workers,
so results do not depend on what ran in the pool before (tests/test_rollout.py checks this bit for bit).
"""

from __future__ import annotations

import json

from world_modality.rollout.env_cache import DEFAULT_ENVS_PER_WORKER
from world_modality.rollout.envs import EnvPool
from world_modality.sim.base import RenderSettings

PoolKey = tuple[str, str, int]


class EnvPools:
    """Started `EnvPool`s by (simulator, render settings, size); close them with ``close`` (or ``with``)."""

    def __init__(self, envs_per_worker: int = DEFAULT_ENVS_PER_WORKER):
        self.envs_per_worker = envs_per_worker
        self._pools: dict[PoolKey, EnvPool] = {}
        self.started = 0  # pools started so far (a reused pool is not counted again)

    def get(self, simulator: str, render: RenderSettings | None, size: int) -> EnvPool:
        """The started pool of this key, or a new one; a pool left mid-command by an interrupted
        evaluation (or with a dead worker) is closed and replaced."""
        key = (simulator, json.dumps(render.to_dict() if render else None, sort_keys=True), size)
        pool = self._pools.get(key)
        if pool is not None and not pool.reusable:
            pool.close()
            pool = None
        if pool is None:
            pool = self._pools[key] = EnvPool(simulator, render, size, self.envs_per_worker)
            self.started += 1
        return pool

    @property
    def pools(self) -> list[EnvPool]:
        """The pools started and not closed."""
        return list(self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    def __enter__(self) -> EnvPools:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
