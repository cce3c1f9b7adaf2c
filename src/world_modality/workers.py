"""How worker processes start (simulators, dataset generation, a training's frame decoding): forked from one fork
server per process.

The server (`multiprocessing`'s forkserver, a fresh process of its own) imports the worker modules once, with the
torch / LeRobot stack under them (several seconds); each worker is then a fork of it that imports only what its own
work adds (its simulator, the video decoder). Started by spawn instead, every worker would import that stack again,
which made starting a pool of simulators cost seconds per worker. The server itself never touches CUDA or OpenGL,
so each worker still makes its own OpenGL context (a fork of a process that rendered would share one). Each worker
takes the environment of its parent at its start, as a spawned one does, not the server's from when the server
started (e.g. a LIBERO config path set since).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.context import BaseContext, ForkServerContext, ForkServerProcess

# What the fork server imports before forking workers: the main module (the `wm` script: a worker would import it
# again otherwise), and the simulator workers' module, which brings the heavy stack (torch, transformers, LeRobot)
# every worker needs and no simulator (MuJoCo and LIBERO load in the worker).
PRELOADED = ["__main__", "world_modality.rollout.envs"]


class _ParentEnvironmentProcess(ForkServerProcess):
    """A fork-server process that runs with its parent's environment as it was at `start`."""

    def start(self) -> None:
        self._parent_environment = dict(os.environ)
        super().start()

    def run(self) -> None:
        os.environ.clear()
        os.environ.update(self._parent_environment)
        super().run()


class _WorkerContext(ForkServerContext):
    Process = _ParentEnvironmentProcess


def worker_context() -> BaseContext:
    """The multiprocessing context worker processes start from (see the module docstring)."""
    mp.set_forkserver_preload(PRELOADED)
    return _WorkerContext()
