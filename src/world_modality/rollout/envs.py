"""Simulator worker processes for rollouts: one env per process, stepped in parallel.

Each worker owns its simulator's env adapter (`world_modality.sim.base.EnvAdapter`, built by the simulator
registered under the pool's name); observations cross the pipe as plain numpy (`world_modality.sim.base.Observation`).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from lerobot_policy_world_modality.errors import InputError
from world_modality.interrupts import child_processes, exit_on_sigterm
from world_modality.rollout.env_cache import DEFAULT_ENVS_PER_WORKER, EnvCache
from world_modality.sim import get_simulator
from world_modality.sim.base import RenderSettings
from world_modality.workers import worker_context

# Simulator processes may outnumber the cores (pipelined env groups): a lower priority keeps the
# policy's process, which every env waits for, from being starved by them.
WORKER_NICENESS = 5


def _worker(conn, simulator_name: str, render_dict: dict | None, envs_per_worker: int) -> None:
    exit_on_sigterm()
    os.nice(WORKER_NICENESS)
    simulator = get_simulator(simulator_name)
    render = simulator.render_from_dict(render_dict) if render_dict else None
    adapter = EnvCache(lambda: simulator.adapter(render), envs_per_worker)
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
    """``size`` processes of the simulator registered as ``simulator``. ``send`` starts a command (reset, step,
    peek) on a subset of them, which run concurrently; ``receive`` collects the results, so the caller can
    work (run the policy for other envs) while these envs step. A pool outlives an evaluation when handed to
    several (`world_modality.rollout.pools.EnvPools`): each worker keeps up to ``envs_per_worker`` built envs
    (`EnvCache`), so a later evaluation of the same tasks resets envs instead of building them.
    """

    def __init__(
        self, simulator: str, render: RenderSettings | None, size: int, envs_per_worker: int = DEFAULT_ENVS_PER_WORKER
    ):
        self.simulator = get_simulator(simulator)  # an unknown name fails here, not in every worker
        if render is not None and render.simulator != simulator:
            raise InputError(f"render settings of simulator {render.simulator!r} given to a {simulator!r} env pool")
        if size < 1:
            raise InputError(f"--workers must be at least 1, got {size}")
        self.render = render
        self._pending: set[int] = set()  # slots whose result has not been received yet
        ctx = worker_context()
        self._conns, self._procs = [], []
        with child_processes():  # interrupts reach this process alone, which closes the pool
            for _ in range(size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker,
                    args=(child, simulator, render.to_dict() if render else None, envs_per_worker),
                    daemon=True,
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
