"""Simulator worker processes for rollouts: one env per process, stepped in parallel.

Each worker owns an env adapter for one suite. Observations cross the pipe as plain numpy:
``{"frames": {camera: uint8 [H, W, 3]}, "state": float32 [S], "env_state": float32 [E]}``.
Each simulator (MetaWorld, LIBERO) has an adapter in ``ADAPTERS``; the runner does not change.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from typing import Any, Protocol

import numpy as np

from world_modality.rollout.env_cache import DEFAULT_ENVS_PER_WORKER, EnvCache
from world_modality.rollout.episodes import EpisodeSpec
from world_modality.sim.libero_env import LiberoEnv, LiberoRenderSettings, proprio_state
from world_modality.sim.metaworld_env import MetaWorldEnv, RenderSettings, agent_state

Observation = dict[str, Any]


class EnvAdapter(Protocol):
    def reset(self, episode: EpisodeSpec) -> Observation: ...
    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]: ...
    def peek(self, actions: np.ndarray) -> np.ndarray: ...  # future env states [K, E], state untouched
    def close(self) -> None: ...


class MetaWorldAdapter:
    """Keeps one MetaWorld env per (task, seed): building MT1's 50 layouts costs ~1.5 s."""

    def __init__(self, render: RenderSettings | None):
        self.render = render
        self._env: MetaWorldEnv | None = None

    def _observation(self, obs: np.ndarray) -> Observation:
        frames = self._env.frames() if self.render is not None else {}
        return {"frames": frames, "state": agent_state(obs), "env_state": obs}

    def reset(self, episode: EpisodeSpec) -> Observation:
        if self._env is None or (self._env.task, self._env.seed) != (episode.task, episode.seed):
            self.close()
            self._env = MetaWorldEnv(episode.task, episode.seed, self.render)
        return self._observation(self._env.reset(episode.layout))

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        obs, success, done = self._env.step(action)
        return self._observation(obs), success, done

    def peek(self, actions: np.ndarray) -> np.ndarray:
        return self._env.peek(actions)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class LiberoAdapter:
    """Keeps one LIBERO env per (suite, task): building one costs seconds. The observation's
    ``env_state`` is the flattened MuJoCo state (the format of LIBERO's init states)."""

    def __init__(self, render: LiberoRenderSettings | None):
        if render is not None and not isinstance(render, LiberoRenderSettings):
            raise ValueError(f"the LIBERO env needs a LIBERO render record (simulator 'libero'), got {render.to_dict()}")
        if render is not None and not render.rotate_180:
            raise ValueError("the checkpoint's frames are LIBERO's raw upside-down images (render rotate_180=False), but the "
                             "LIBERO env renders LeRobot's convention (rotate_180=True); retrain on rotated frames")
        self.render = render
        self._env: LiberoEnv | None = None

    def _observation(self, raw: dict) -> Observation:
        return {"frames": self._env.frames(raw), "state": proprio_state(raw), "env_state": self._env.sim_state()}

    def reset(self, episode: EpisodeSpec) -> Observation:
        if self._env is None or (self._env.suite, self._env.task, self._env.seed) != (episode.suite, episode.task, episode.seed):
            self.close()
            self._env = LiberoEnv(episode.suite, episode.task, self.render, episode.seed)
        return self._observation(self._env.reset(episode.layout))

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        raw, success, done = self._env.step(action)
        return self._observation(raw), success, done

    def peek(self, actions: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "oracle memory at rollout needs the simulator's future in the state encoder's space, which exists for "
            "MetaWorld only; on LIBERO use `wm intervene --mode oracle` (offline) instead"
        )

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


ADAPTERS: dict[str, Callable[[RenderSettings | None], EnvAdapter]] = {"metaworld": MetaWorldAdapter, "libero": LiberoAdapter}
# Simulator processes may outnumber the cores (pipelined env groups): a lower priority keeps the
# policy's process, which every env waits for, from being starved by them.
WORKER_NICENESS = 5


def _worker(conn, suite: str, render_dict: dict | None, envs_per_worker: int) -> None:
    os.nice(WORKER_NICENESS)
    render = RenderSettings.from_dict(render_dict) if render_dict else None
    adapter = EnvCache(lambda: ADAPTERS[suite](render), envs_per_worker)
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                result = getattr(adapter, command)(payload)
                conn.send(("ok", result))
            except Exception:  # report the worker's traceback in the parent
                conn.send(("error", traceback.format_exc()))
    finally:
        adapter.close()
        conn.close()


class EnvPool:
    """``size`` simulator processes. ``send`` starts a command (reset, step, peek) on a subset of them,
    which run concurrently; ``receive`` collects the results, so the caller can work (run the policy for
    other envs) while these envs step. A pool outlives an evaluation when handed to several
    (`world_modality.rollout.pools.EnvPools`): each worker keeps up to ``envs_per_worker`` built envs
    (`EnvCache`), so a later evaluation of the same tasks resets envs instead of building them.
    """

    def __init__(self, suite: str, render: RenderSettings | None, size: int,
                 envs_per_worker: int = DEFAULT_ENVS_PER_WORKER):
        if suite not in ADAPTERS:
            raise ValueError(f"unknown env {suite!r}; available: {', '.join(ADAPTERS)}")
        if size < 1:
            raise ValueError(f"--workers must be at least 1, got {size}")
        self.suite, self.render = suite, render
        self._pending: set[int] = set()  # slots whose result has not been received yet
        ctx = mp.get_context("spawn")  # a fresh OpenGL context per worker
        self._conns, self._procs = [], []
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(child, suite, render.to_dict() if render else None, envs_per_worker), daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._conns)

    def send(self, command: str, payloads: dict[int, Any]) -> None:
        """Start ``command`` (reset, step, peek) on the given slots without waiting for them."""
        for slot, payload in payloads.items():
            self._conns[slot].send((command, payload))
            self._pending.add(slot)

    def receive(self, slots: Iterable[int]) -> dict[int, Any]:
        """The results of the slots' last ``send``, waiting for each."""
        results = {}
        for slot in slots:
            status, value = self._conns[slot].recv()
            self._pending.discard(slot)
            if status == "error":
                raise RuntimeError(f"simulator worker {slot} failed:\n{value}")
            results[slot] = value
        return results

    def wait_any(self, slot_sets: list[list[int]]) -> int:
        """Index of a slot set whose every slot has its result ready (blocking until one has)."""
        ready: set[int] = set()
        while True:
            for index, slots in enumerate(slot_sets):
                if ready.issuperset(slots):
                    return index
            waiting = {self._conns[s]: s for slots in slot_sets for s in slots if s not in ready}
            ready.update(waiting[conn] for conn in wait(list(waiting)))

    def peek(self, actions: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The simulator's own future env states [K, E] under action sequences [K, A], per slot."""
        self.send("peek", {slot: np.asarray(a, dtype=np.float32) for slot, a in actions.items()})
        return self.receive(actions)

    @property
    def reusable(self) -> bool:
        """Every worker is alive and no result is outstanding (an interrupted evaluation leaves some:
        the next one would read them as its own)."""
        return bool(self._procs) and not self._pending and all(p.is_alive() for p in self._procs)

    def env_builds(self) -> int:
        """Envs built so far by all workers together."""
        self.send("env_builds", dict.fromkeys(range(self.size)))
        return sum(self.receive(range(self.size)).values())

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
