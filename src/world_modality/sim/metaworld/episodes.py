"""MetaWorld evaluation episodes: (task, MT1 seed, layout index), skipping the layouts a policy was trained on."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from lerobot_policy_world_modality.errors import InputError
from world_modality.choices import EVAL
from world_modality.sim.base import EpisodeSpec
from world_modality.sim.metaworld.env import NAME, layout_sequence


def metaworld_episodes(
    tasks: list[str],
    episodes_per_task: int,
    eval_seed: int = EVAL.eval_seed,
    train_layouts: dict[str, set[tuple[int, int]]] | None = None,
    allow_train_layouts: bool = False,
) -> list[EpisodeSpec]:
    """``episodes_per_task`` layouts per task: layouts 0..49 of ``eval_seed``, then of ``eval_seed + 1``...

    Layouts a policy was trained on are skipped unless ``allow_train_layouts``: closed-loop success on
    training layouts measures memorisation, not the policy.
    """
    if episodes_per_task < 1:
        raise InputError(f"--episodes-per-task must be at least 1, got {episodes_per_task}")
    episodes = []
    for task in tasks:
        used = set() if allow_train_layouts else (train_layouts or {}).get(task, set())
        fresh = (pair for pair in layout_sequence(eval_seed) if pair not in used)
        episodes += [EpisodeSpec(NAME, task, s, layout) for s, layout in itertools.islice(fresh, episodes_per_task)]
    return episodes


def training_layouts(dataset: Path | None) -> tuple[list[str], dict[str, set[tuple[int, int]]]]:
    """The tasks and (seed, layout) pairs of a generated MetaWorld dataset (empty when unknown)."""
    from world_modality.sim.metaworld.generate import SIDECAR

    if dataset is None or not (dataset / SIDECAR).exists():
        return [], {}
    sidecar = json.loads((dataset / SIDECAR).read_text())
    layouts = {task: {tuple(x) for x in pairs} for task, pairs in sidecar["train_layouts"].items()}
    return list(sidecar["spec"]["tasks"]), layouts
