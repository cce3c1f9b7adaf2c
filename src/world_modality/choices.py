"""Defaults the pipeline's command line, experiment matrix and rollout runner share, in one place and free
of heavy imports (the command line offers them before any model library is loaded). Names the policy
plugin owns (memory modes, encoders, policy types) live in the plugin; simulator names in `world_modality.sim`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalDefaults:
    """The defaults of a closed-loop evaluation (`wm eval`, the matrix's ``evaluation`` section,
    `world_modality.rollout.evaluate_checkpoint`)."""

    episodes_per_task: int = 10
    eval_seed: int = 1000  # first seed of the evaluation scenes, far from the seeds datasets are generated from (0, 1, ...)
    workers: int = 2  # simulator processes
    groups: int = 1  # pipelined lockstep groups of the workers
    videos_per_task: int = 0
    max_steps: int | None = None  # None: the simulator's episode limit


EVAL = EvalDefaults()
