"""LIBERO as a `Simulator`: render records detected from the data, (suite, task, init state) episodes,
LIBERO-format dataset checks and small datasets. LIBERO itself loads only when its catalogue or an env is used."""

from __future__ import annotations

from pathlib import Path

from lerobot_policy_world_modality.errors import InputError
from world_modality.data.check import DatasetKeys, DatasetSummary, task_instructions
from world_modality.sim.base import EpisodeRequest, EpisodeSpec, Simulator
from world_modality.sim.libero.adapter import LiberoAdapter
from world_modality.sim.libero.data import check_libero_dataset, generate_libero_dataset, looks_like_libero
from world_modality.sim.libero.env import ACTION_DIM, STATE_DIM, LiberoRenderSettings, suite_tasks, task_instruction
from world_modality.sim.libero.episodes import libero_episodes
from world_modality.sim.libero.setup import NAME, SUITES


class Libero(Simulator):
    name = NAME
    title = "LIBERO"
    suites = SUITES
    adapter = LiberoAdapter
    state_dim, action_dim = STATE_DIM, ACTION_DIM
    dataset_generator = staticmethod(generate_libero_dataset)

    def owns_render(self, record: dict) -> bool:
        return record.get("simulator") == NAME

    def render_from_dict(self, record: dict) -> LiberoRenderSettings:
        return LiberoRenderSettings.from_dict(record)

    def owns_suite(self, suite: str) -> bool:
        return suite in SUITES

    def check_suite(self, suite: str | None) -> None:
        if suite not in SUITES:
            raise InputError(f"env libero needs one of {', '.join(SUITES)} (--suite), got {suite!r}")

    def parse_tasks(self, tasks: str | list[str]) -> list[str]:
        """Task names or ids within the suite, as given (they are resolved against the suite's catalogue when
        the episodes are built)."""
        items = tasks.split(",") if isinstance(tasks, str) else tasks
        return [str(t).strip() for t in items if str(t).strip()]

    def evaluation_episodes(self, request: EpisodeRequest) -> list[EpisodeSpec]:
        self.check_suite(request.suite)
        suite = request.suite
        tasks = self.parse_tasks(request.tasks) if request.tasks else None
        if tasks is None and request.instructions:  # default: the suite's tasks the policy was trained on
            tasks = [t.name for t in suite_tasks(suite) if t.language in request.instructions]
            if not tasks:
                raise InputError(
                    f"the policy was trained on none of {suite}'s tasks (its instructions: {list(request.instructions)})"
                )
        return libero_episodes(suite, tasks, request.episodes_per_task)

    def instruction(self, episode: EpisodeSpec) -> str:
        return task_instruction(episode.suite, episode.task)

    def dataset_complete(self, root: Path) -> bool:
        return (Path(root) / "meta" / "info.json").is_file()  # the generator renames a finished dataset into place

    def dataset_tasks(self, root: Path, suite: str | None = None) -> list[str] | None:
        """The suite's tasks whose instructions the dataset's `task` column holds (LIBERO data records instructions,
        not task names); None without a suite or an instruction table."""
        if suite is None or not (Path(root) / "meta" / "tasks.parquet").is_file():
            return None
        instructions = set(task_instructions(Path(root)).values())
        tasks = [t.name for t in suite_tasks(suite) if t.language in instructions]
        if not tasks:
            raise InputError(
                f"the dataset {root} holds demos of none of {suite}'s tasks (its instructions: "
                f"{sorted(instructions)[:3]}...); evaluate the suite it was recorded in"
            )
        return tasks

    def looks_like_own(self, root: Path, features: dict) -> bool:
        return looks_like_libero(features)

    def check_dataset(self, summary: DatasetSummary, keys: DatasetKeys) -> dict | None:
        return check_libero_dataset(summary, required=keys.simulator == NAME)

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        return {}  # an evaluation covers one suite, and a suite has no groups of its tasks
