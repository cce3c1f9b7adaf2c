"""Evaluation episodes: identified by (suite, task, seed, layout), identical for every arm."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from world_modality.sim.metaworld_env import layout_sequence

DEFAULT_EVAL_SEED = 1000  # far from the training seeds `wm data metaworld` starts at (0, 1, ...)


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
