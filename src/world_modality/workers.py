"""How simulator and dataset-generation worker processes start: forked from one fork server per process.

The server (`multiprocessing`'s forkserver, a fresh process of its own) imports the worker modules once, with the
torch / LeRobot stack under them (several seconds); each worker is then a fork of it that imports nothing more than
its simulator. Started by spawn instead, every worker would import that stack again, which made starting a pool
of simulators cost seconds per worker. The server itself never touches CUDA or OpenGL, so each worker still makes
its own OpenGL context (a fork of a process that rendered would share one).
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

# What the fork server imports before forking workers: the main module (the `wm` script: a worker would import it
# again otherwise), and the simulator workers' module, which brings the heavy stack (torch, transformers, LeRobot)
# every worker needs and no simulator (MuJoCo and LIBERO load in the worker).
PRELOADED = ["__main__", "world_modality.rollout.envs"]


def worker_context() -> BaseContext:
    """The multiprocessing context worker processes start from (see the module docstring)."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context
