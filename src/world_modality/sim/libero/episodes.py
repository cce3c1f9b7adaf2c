"""LIBERO evaluation episodes: suite, task (its LIBERO name), the env seed, init-state index (LIBERO's order).

The init state, set after reset, fixes the scene; the env seed is the same for every episode."""

from __future__ import annotations

from lerobot_policy_world_modality.errors import InputError
from world_modality.sim.base import EpisodeSpec
from world_modality.sim.libero.env import init_states, suite_tasks, task_id

ENV_SEED = 0


def libero_episodes(suite: str, tasks: list[str] | None, episodes_per_task: int) -> list[EpisodeSpec]:
    """Init states 0..N-1 of each task (all the suite's tasks when ``tasks`` is None), LIBERO's order."""
    if episodes_per_task < 1:
        raise InputError(f"--episodes-per-task must be at least 1, got {episodes_per_task}")
    names = [t.name for t in suite_tasks(suite)]
    selected = [names[task_id(suite, t)] for t in tasks] if tasks else names
    episodes = []
    for name in selected:
        available = len(init_states(suite, name))
        if episodes_per_task > available:
            raise InputError(
                f"{suite} task {name!r} has {available} init states; --episodes-per-task {episodes_per_task} is more"
            )
        episodes += [EpisodeSpec(suite, name, ENV_SEED, i) for i in range(episodes_per_task)]
    return episodes
