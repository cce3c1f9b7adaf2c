"""The simulator registry (`world_modality.sim`): lazy packages, one interface, dispatch by name, render
record, suite and dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from world_modality import sim
from world_modality.sim.base import EpisodeRequest, Simulator

SIMULATOR_LIBRARIES = ("mujoco", "metaworld", "libero", "robosuite")


def test_registry_and_packages_import_no_simulator():
    """Naming, listing and asking the simulators about suites, groups and render records imports none of
    their libraries: those load only when an env is built."""
    code = (
        "import sys\nfrom world_modality import sim\n"
        "[s.task_groups() for s in sim.simulators()]; sim.evaluation_suites()\n"
        "sim.render_from_dict({'cameras': ['image'], 'width': 8, 'height': 8, 'rotate_180': True, 'simulator': 'libero'})\n"
        f"print(sorted(m for m in {SIMULATOR_LIBRARIES!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "[]"


def test_every_registered_package_provides_a_simulator_of_its_name():
    assert sim.SIMULATOR_NAMES == ("metaworld", "libero") and sim.DEFAULT_SIMULATOR in sim.SIMULATOR_NAMES
    for name in sim.SIMULATOR_NAMES:
        simulator = sim.get_simulator(name)
        assert isinstance(simulator, Simulator) and simulator.name == name
    with pytest.raises(ValueError, match="unknown simulator 'mujoco'; available: metaworld, libero"):
        sim.get_simulator("mujoco")


def test_render_records_go_to_the_simulator_they_are_from():
    from world_modality.sim.libero.env import LiberoRenderSettings
    from world_modality.sim.metaworld.env import RenderSettings

    metaworld = RenderSettings(width=64, height=64)
    # MetaWorld's records carry no simulator name (stored specs and hashes stay as they were) ...
    assert "simulator" not in metaworld.to_dict() and metaworld.simulator == "metaworld"
    assert sim.render_from_dict(metaworld.to_dict()) == metaworld
    libero = LiberoRenderSettings(cameras=("image",), width=32, height=32)
    assert sim.render_from_dict(libero.to_dict()) == libero and libero.simulator == "libero"
    with pytest.raises(ValueError, match="is no simulator's"):
        sim.render_from_dict(metaworld.to_dict() | {"simulator": "mujoco"})


def test_suites_and_task_groups_come_from_the_simulator_of_the_episodes():
    from world_modality.sim.libero.setup import SUITES

    assert sim.evaluation_suites() == SUITES
    metaworld = sim.episodes_simulator(["metaworld"])
    assert metaworld is sim.get_simulator("metaworld") and metaworld.title == "MetaWorld"
    groups = metaworld.task_groups()
    assert list(groups) == ["easy", "medium", "hard", "very_hard"]
    assert [len(tasks) for tasks in groups.values()] == [28, 11, 6, 5]  # LeRobot's MT50 grouping
    assert "reach-v3" in groups["easy"] and "basketball-v3" in groups["medium"]
    assert "pick-place-v3" in groups["hard"] and "shelf-place-v3" in groups["very_hard"]
    libero = sim.episodes_simulator(["libero_goal"])
    assert libero.title == "LIBERO" and libero.task_groups() == {}  # a LIBERO evaluation is one suite, without groups
    assert sim.episodes_simulator(["metaworld", "libero_goal"]) is None is sim.episodes_simulator(["elsewhere"])


def test_each_simulator_checks_its_suite_and_tasks():
    metaworld, libero = sim.get_simulator("metaworld"), sim.get_simulator("libero")
    metaworld.check_suite(None)
    with pytest.raises(ValueError, match="MetaWorld evaluations take no suite"):
        metaworld.check_suite("libero_goal")
    libero.check_suite("libero_goal")
    with pytest.raises(ValueError, match=r"env libero needs one of libero_spatial, .* \(--suite\), got None"):
        libero.check_suite(None)
    with pytest.raises(ValueError, match="got 'libero_100'"):
        libero.check_suite("libero_100")
    assert metaworld.parse_tasks("reach, drawer-close-v3") == ["reach-v3", "drawer-close-v3"]
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        metaworld.parse_tasks("reach,nope")
    assert libero.parse_tasks("0, 1,") == ["0", "1"] == libero.parse_tasks([0, " 1"])
    with pytest.raises(ValueError, match="does not record its training tasks"):
        metaworld.evaluation_episodes(EpisodeRequest(tasks=None, episodes_per_task=1, eval_seed=0))


def test_dataset_checks_and_render_record_of_a_generated_metaworld_dataset(metaworld_dataset, tmp_path):
    from world_modality.data.check import DatasetKeys, DatasetSchemaError
    from world_modality.data.check import check_dataset as check_schema
    from world_modality.sim.metaworld.generate import SIDECAR

    sidecar = json.loads((metaworld_dataset / SIDECAR).read_text())
    metaworld = sim.get_simulator("metaworld")
    assert (
        metaworld.dataset_complete(metaworld_dataset)
        and metaworld.dataset_tasks(metaworld_dataset) == sidecar["spec"]["tasks"]
    )
    assert (
        sim.check_dataset(metaworld_dataset).render
        == sidecar["spec"]["render"]
        == sim.dataset_render(metaworld_dataset)
    )
    assert check_schema(metaworld_dataset).render is None  # the schema check alone knows no simulator
    # Data that is not LIBERO's, checked as LIBERO's on request, is refused (its instructions are MetaWorld's).
    with pytest.raises(DatasetSchemaError, match="are not LIBERO tasks'"):
        sim.check_dataset(metaworld_dataset, DatasetKeys(simulator="libero"))
    with pytest.raises(ValueError, match="unknown simulator 'elsewhere'"):
        sim.check_dataset(metaworld_dataset, DatasetKeys(simulator="elsewhere"))
    assert not metaworld.dataset_complete(tmp_path) and metaworld.dataset_tasks(tmp_path) is None
