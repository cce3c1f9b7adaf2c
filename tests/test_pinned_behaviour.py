"""Values pinned with the code as it was before a refactor, so a refactor that changes them fails:
MetaWorld evaluation episode lists ((task, MT1 seed, layout index), in order) and the fingerprint and
episode list of a tiny generated dataset (`wm demo` must keep giving the same data and episodes)."""

from __future__ import annotations

import hashlib
import json

from lerobot_policy_world_modality.dataset_files import dataset_fingerprint
from world_modality.commands.demo import DEMO_TASKS
from world_modality.sim import get_simulator
from world_modality.sim.base import EpisodeRequest
from world_modality.sim.metaworld.episodes import metaworld_episodes, training_layouts
from world_modality.sim.metaworld.generate import SIDECAR, generate_metaworld_dataset
from world_modality.sim.metaworld.tasks import resolve_tasks


def _ids(episodes) -> list[str]:
    return [e.episode_id for e in episodes]


def _digest(episodes) -> str:
    return hashlib.sha256("\n".join(_ids(episodes)).encode()).hexdigest()[:16]


def test_metaworld_episode_lists_are_pinned():
    episodes = metaworld_episodes(["reach-v3", "pick-place-v3"], 3, 1000, {"reach-v3": {(1000, 0), (1000, 2)}})
    assert _ids(episodes) == [
        "metaworld|reach-v3|1000|1",
        "metaworld|reach-v3|1000|3",
        "metaworld|reach-v3|1000|4",
        "metaworld|pick-place-v3|1000|0",
        "metaworld|pick-place-v3|1000|1",
        "metaworld|pick-place-v3|1000|2",
    ]
    # Past a seed's 50 layouts the list continues with the next seed's.
    wrapped = metaworld_episodes(["door-open-v3"], 52, 7)
    assert (_digest(wrapped), wrapped[-1].episode_id) == ("1e38c59cfbad4585", "metaworld|door-open-v3|8|1")
    # `wm demo`'s evaluation list: its tasks, 10 episodes each, evaluation seed 1000.
    demo = metaworld_episodes(resolve_tasks(DEMO_TASKS), 10)
    assert (_digest(demo), len(demo)) == ("70822c1f87f69c27", 40)


def test_generated_dataset_fingerprint_and_episodes_are_pinned(tmp_path):
    out = tmp_path / "pinned"
    generate_metaworld_dataset(out, "reach-v3,drawer-close", 1, image_size=32, seed=4)
    sidecar = json.loads((out / SIDECAR).read_text())
    assert [(e["task"], e["seed"], e["layout_index"], e["length"]) for e in sidecar["episodes"]] == [
        ("reach-v3", 4, 0, 45),
        ("drawer-close-v3", 4, 0, 79),
    ]
    # Re-pinned when episodes came to be written per task and appended (issue 17): every frame of data/ is the
    # same as before (checked column by column); only meta/episodes' per-episode task_index quantiles changed,
    # from rounding noise (4e-16) to the exact constant 0. Re-pinned again when the appended episode table stopped
    # carrying pandas' schema metadata (as LeRobot writes it): the bytes of meta/episodes changed, no value did.
    assert dataset_fingerprint(out) == "da67280600ec4d82"
    # Evaluating on the dataset's own seed skips the layouts it was trained on; by default the tasks are its tasks.
    tasks, layouts = training_layouts(out)
    pinned = [
        "metaworld|reach-v3|4|1",
        "metaworld|reach-v3|4|2",
        "metaworld|drawer-close-v3|4|1",
        "metaworld|drawer-close-v3|4|2",
    ]
    assert _ids(metaworld_episodes(tasks, 2, 4, layouts)) == pinned
    request = EpisodeRequest(tasks=None, episodes_per_task=2, eval_seed=4, dataset=out)
    assert _ids(get_simulator("metaworld").evaluation_episodes(request)) == pinned  # what `wm eval` runs
