"""The MetaWorld task catalogue: task names, benchmark sets, LeRobot's groups and instructions.

Instructions and difficulty groups are read from LeRobot's ``metaworld_config.json`` so that our
datasets, LeRobot's ``MetaworldEnv`` and LeRobot's ``metaworld_mt50`` dataset agree word for word.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from lerobot_policy_world_modality.errors import InputError, SetupError


@cache
def _lerobot_metaworld_config() -> dict:
    # Read by path: importing ``lerobot.envs`` pulls in every simulator wrapper (~20 s on 2 cores).
    lerobot_dir = Path(find_spec("lerobot").submodule_search_locations[0])
    return json.loads((lerobot_dir / "envs" / "metaworld_config.json").read_text())


@cache
def all_tasks() -> tuple[str, ...]:
    """The 50 MetaWorld v3 task names, in LeRobot's task-id order."""
    ids = _lerobot_metaworld_config()["TASK_NAME_TO_ID"]
    return tuple(sorted(ids, key=ids.__getitem__))


DIFFICULTY_ORDER = ("easy", "medium", "hard", "very_hard")


@cache
def difficulty_groups() -> dict[str, tuple[str, ...]]:
    """LeRobot's MT50 grouping, easy (28), medium (11), hard (6), very_hard (5): group -> task names."""
    groups = _lerobot_metaworld_config()["DIFFICULTY_TO_TASKS"]
    if set(groups) != set(DIFFICULTY_ORDER):
        raise SetupError(
            f"LeRobot's metaworld_config.json has the difficulty groups {sorted(groups)}, expected {DIFFICULTY_ORDER}"
        )
    return {name: tuple(groups[name]) for name in DIFFICULTY_ORDER}


def instruction(task: str) -> str:
    """The natural-language instruction of a task (LeRobot's description)."""
    try:
        return _lerobot_metaworld_config()["TASK_DESCRIPTIONS"][task]
    except KeyError:
        raise InputError(unknown_task_message(task)) from None


def task_group(task: str) -> str:
    for group, tasks in difficulty_groups().items():
        if task in tasks:
            return group
    raise InputError(unknown_task_message(task))


@cache
def _mt10() -> tuple[str, ...]:
    from metaworld.env_dict import MT10_V3

    return tuple(MT10_V3)


def unknown_task_message(name: str) -> str:
    return (
        f"unknown MetaWorld task or task set {name!r}. Use task names such as 'pick-place-v3' "
        f"(all 50: {', '.join(all_tasks())}), the sets MT10 or MT50, or a group "
        f"({', '.join(difficulty_groups())})."
    )


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand a comma-separated list of task names, ``MT10``, ``MT50`` and groups, in order.

    Task names may omit the ``-v3`` suffix. Duplicates are dropped, keeping the first occurrence.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise InputError("no MetaWorld task given: " + unknown_task_message(""))
    groups = difficulty_groups()
    known = set(all_tasks())
    out: list[str] = []
    for item in items:
        if item.upper() == "MT50":
            out.extend(all_tasks())
        elif item.upper() == "MT10":
            out.extend(_mt10())
        elif item.lower().replace("-", "_") in groups:
            out.extend(groups[item.lower().replace("-", "_")])
        elif item in known:
            out.append(item)
        elif f"{item}-v3" in known:
            out.append(f"{item}-v3")
        else:
            raise InputError(unknown_task_message(item))
    return list(dict.fromkeys(out))
