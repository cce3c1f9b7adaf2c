"""MetaWorld as a `Simulator`: render records, (task, MT1 seed, layout) episodes, expert-demo datasets and
LeRobot's difficulty groups. MetaWorld and MuJoCo themselves load only when an env is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lerobot_policy_world_modality.errors import InputError
from world_modality.sim.base import EpisodeRequest, EpisodeSpec, Simulator
from world_modality.sim.metaworld.adapter import MetaWorldAdapter
from world_modality.sim.metaworld.env import ACTION_DIM, NAME, STATE_DIM, RenderSettings
from world_modality.sim.metaworld.episodes import metaworld_episodes, training_layouts
from world_modality.sim.metaworld.generate import SIDECAR, generate_metaworld_dataset
from world_modality.sim.metaworld.tasks import difficulty_groups, instruction, resolve_tasks

if TYPE_CHECKING:
    from world_modality.data.check import DatasetKeys, DatasetSummary


class MetaWorld(Simulator):
    name = NAME
    title = "MetaWorld"
    adapter = MetaWorldAdapter
    state_dim, action_dim = STATE_DIM, ACTION_DIM
    dataset_generator = staticmethod(generate_metaworld_dataset)

    def owns_render(self, record: dict) -> bool:
        return record.get("simulator", NAME) == NAME  # MetaWorld's records carry no name (RenderSettings.simulator)

    def render_from_dict(self, record: dict) -> RenderSettings:
        return RenderSettings.from_dict(record)

    def owns_suite(self, suite: str) -> bool:
        return suite == NAME

    def check_suite(self, suite: str | None) -> None:
        if suite is not None:
            raise InputError(f"MetaWorld evaluations take no suite; got suite {suite!r}")

    def parse_tasks(self, tasks: str | list[str]) -> list[str]:
        return resolve_tasks(tasks)

    def evaluation_episodes(self, request: EpisodeRequest) -> list[EpisodeSpec]:
        self.check_suite(request.suite)
        trained_tasks, layouts = training_layouts(request.dataset)
        tasks = self.parse_tasks(request.tasks) if request.tasks else trained_tasks
        if not tasks:
            raise InputError("the checkpoint does not record its training tasks; pass --tasks")
        return metaworld_episodes(
            tasks, request.episodes_per_task, request.eval_seed, layouts, request.allow_train_layouts
        )

    def instruction(self, episode: EpisodeSpec) -> str:
        return instruction(episode.task)

    def dataset_complete(self, root: Path) -> bool:
        return (Path(root) / SIDECAR).is_file()

    def dataset_tasks(self, root: Path, suite: str | None = None) -> list[str] | None:
        return training_layouts(Path(root))[0] or None

    def looks_like_own(self, root: Path, features: dict) -> bool:
        return (Path(root) / SIDECAR).is_file()

    def check_dataset(self, summary: DatasetSummary, keys: DatasetKeys) -> dict | None:
        """The generator's render settings, from the dataset's sidecar (the generator checked everything else)."""
        sidecar = summary.root / SIDECAR
        return json.loads(sidecar.read_text())["spec"]["render"] if sidecar.is_file() else None

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        return difficulty_groups()
