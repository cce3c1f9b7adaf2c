"""Evaluation episodes: identified by (suite, task, seed, layout), identical for every arm.

MetaWorld: suite ``metaworld``, layout = index among an MT1 seed's 50 layouts. LIBERO: suite = the
LIBERO suite, task = the task's LIBERO name, layout = init-state index (LIBERO's fixed order),
seed = the env seed (`LIBERO_ENV_SEED`; the init state, set after reset, fixes the scene).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from world_modality.sim.metaworld.env import layout_sequence

DEFAULT_EVAL_SEED = 1000  # far from the training seeds `wm data metaworld` starts at (0, 1, ...)
LIBERO_ENV_SEED = 0
ENVS = ("metaworld", "libero")


@dataclass(frozen=True)
class EpisodeSpec:
    suite: str
    task: str
    seed: int
    layout: int

    @property
    def episode_id(self) -> str:
        return f"{self.suite}|{self.task}|{self.seed}|{self.layout}"

    def to_dict(self) -> dict:
        return asdict(self) | {"episode_id": self.episode_id}


def metaworld_episodes(
    tasks: list[str],
    episodes_per_task: int,
    eval_seed: int = DEFAULT_EVAL_SEED,
    train_layouts: dict[str, set[tuple[int, int]]] | None = None,
    allow_train_layouts: bool = False,
) -> list[EpisodeSpec]:
    """``episodes_per_task`` layouts per task: layouts 0..49 of ``eval_seed``, then of ``eval_seed + 1``...

    Layouts a policy was trained on are skipped unless ``allow_train_layouts``: closed-loop success on
    training layouts measures memorisation, not the policy.
    """
    if episodes_per_task < 1:
        raise ValueError(f"--episodes-per-task must be at least 1, got {episodes_per_task}")
    episodes = []
    for task in tasks:
        used = set() if allow_train_layouts else (train_layouts or {}).get(task, set())
        fresh = (pair for pair in layout_sequence(eval_seed) if pair not in used)
        episodes += [EpisodeSpec("metaworld", task, s, layout) for s, layout in itertools.islice(fresh, episodes_per_task)]
    return episodes


def libero_episodes(suite: str, tasks: list[str] | None, episodes_per_task: int) -> list[EpisodeSpec]:
    """Init states 0..N-1 of each task (all the suite's tasks when ``tasks`` is None), LIBERO's order."""
    from world_modality.sim.libero.env import init_states, suite_tasks, task_id

    if episodes_per_task < 1:
        raise ValueError(f"--episodes-per-task must be at least 1, got {episodes_per_task}")
    names = [t.name for t in suite_tasks(suite)]
    selected = [names[task_id(suite, t)] for t in tasks] if tasks else names
    episodes = []
    for name in selected:
        available = len(init_states(suite, name))
        if episodes_per_task > available:
            raise ValueError(f"{suite} task {name!r} has {available} init states; --episodes-per-task {episodes_per_task} is more")
        episodes += [EpisodeSpec(suite, name, LIBERO_ENV_SEED, i) for i in range(episodes_per_task)]
    return episodes


def episode_instruction(episode: EpisodeSpec) -> str:
    """The instruction the policy is given for an episode's task."""
    if episode.suite == "metaworld":
        from world_modality.sim.metaworld.tasks import instruction

        return instruction(episode.task)
    from world_modality.sim.libero.env import task_instruction

    return task_instruction(episode.suite, episode.task)

