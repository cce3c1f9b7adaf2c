"""The simulators, registered by name (docs/ARCHITECTURE.md, How to add a simulator).

Each name maps to a package ``world_modality.sim.<name>`` whose ``SIMULATOR`` (a `Simulator`) provides
its title, render settings, episode list, env adapter, dataset generation and checks, and task groups. A
package is imported when it is first asked for, and a package's import starts no simulator: importing
this module imports neither MuJoCo nor LIBERO. Code outside the packages reaches a simulator only
through these functions.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lerobot_policy_world_modality.errors import InputError
from world_modality.sim.base import RenderSettings, Simulator

if TYPE_CHECKING:
    from world_modality.data.check import DatasetKeys, DatasetSummary

_PACKAGES = {"metaworld": "world_modality.sim.metaworld", "libero": "world_modality.sim.libero"}
SIMULATOR_NAMES = tuple(_PACKAGES)
DEFAULT_SIMULATOR = "metaworld"


def get_simulator(name: str) -> Simulator:
    """The simulator registered as ``name``."""
    if name not in _PACKAGES:
        raise InputError(f"unknown simulator {name!r}; available: {', '.join(SIMULATOR_NAMES)}")
    simulator = importlib.import_module(_PACKAGES[name]).SIMULATOR
    if simulator.name != name:
        raise RuntimeError(f"{_PACKAGES[name]}.SIMULATOR is named {simulator.name!r}, registered as {name!r}")
    return simulator


def simulators() -> list[Simulator]:
    """Every registered simulator, in registration order."""
    return [get_simulator(name) for name in SIMULATOR_NAMES]


def evaluation_suites() -> tuple[str, ...]:
    """The suites of every simulator (the choices of ``wm eval --suite``)."""
    return tuple(suite for simulator in simulators() for suite in simulator.suites)


def render_from_dict(record: dict) -> RenderSettings:
    """The render settings of a render record (an encoder spec's ``render``), by the simulator it is from."""
    owners = [simulator for simulator in simulators() if simulator.owns_render(record)]
    if len(owners) != 1:
        raise InputError(
            f"the render record {record} is {'no' if not owners else 'more than one'} simulator's "
            f"(simulators: {', '.join(SIMULATOR_NAMES)})"
        )
    return owners[0].render_from_dict(record)


def episodes_simulator(suites: Iterable[str]) -> Simulator | None:
    """The simulator that episodes of these suites (episode records' ``suite``) ran in (its task groups, its title);
    None when they ran in none or in several."""
    suites = set(suites)
    owners = [simulator for simulator in simulators() if any(simulator.owns_suite(s) for s in suites)]
    return owners[0] if len(owners) == 1 else None


def check_dataset(path_or_repo_id: str | Path, keys: DatasetKeys | None = None) -> DatasetSummary:
    """The dataset checks of `world_modality.data.check.check_dataset`, then those of the simulator the data is
    from (``keys.simulator``, else each simulator whose data it looks like). The summary's ``render`` is that
    simulator's render record (None for data from no simulator)."""
    from world_modality.data.check import DatasetKeys, DatasetSchemaError
    from world_modality.data.check import check_dataset as check_schema

    keys = keys or DatasetKeys()
    summary = check_schema(path_or_repo_id, keys)
    if keys.simulator is not None:
        candidates = [get_simulator(keys.simulator)]
    else:
        candidates = [
            simulator for simulator in simulators() if simulator.looks_like_own(summary.root, summary.features)
        ]
    renders = {
        simulator.name: render
        for simulator in candidates
        if (render := simulator.check_dataset(summary, keys)) is not None
    }
    if len(renders) > 1:
        raise DatasetSchemaError(
            f"{summary.root} passes the dataset checks of several simulators ({', '.join(renders)}); "
            "name the one it comes from (DatasetKeys.simulator)"
        )
    return dataclasses.replace(summary, render=next(iter(renders.values()), None))


def dataset_render(path_or_repo_id: str | Path, keys: DatasetKeys | None = None) -> dict | None:
    """The render record of a dataset from a simulator, after the dataset checks (which read the instructions under
    ``keys.instruction``); None for other data."""
    from lerobot_policy_world_modality.dataset_files import dataset_info, resolve_dataset_root

    root, _ = resolve_dataset_root(path_or_repo_id)
    features = dataset_info(root)["features"]
    if not any(simulator.looks_like_own(root, features) for simulator in simulators()):
        return None
    return check_dataset(root, keys).render
