"""Schema checks for LeRobot v3 datasets: what the pipeline needs, with errors that name what exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from lerobot_policy_world_modality.dataset_files import DatasetSchemaError, dataset_info, resolve_dataset_root

CAMERA_DTYPES = ("image", "video")


@dataclass
class DatasetKeys:
    """Which dataset keys the pipeline reads. LeRobot datasets keep the instruction under ``task``."""

    image: str | None = None  # None: the first camera feature
    wrist: str | None = None
    state: str = OBS_STATE
    action: str = ACTION
    instruction: str = "task"
    state_dim: int | None = None
    action_dim: int | None = None
    # Every episode really has the one instruction under ``instruction``: accept it although another text column
    # varies between episodes (else refused: that column is likely where the instructions are).
    single_instruction: bool = False
    # The simulator whose dataset checks apply (`world_modality.sim.check_dataset`); None: those of each
    # simulator whose data it looks like.
    simulator: str | None = None


@dataclass
class DatasetSummary:
    root: Path
    repo_id: str
    fps: int
    episodes: int
    frames: int
    tasks: list[str]
    keys: dict[str, str]  # resolved role -> dataset key
    features: dict[str, dict] = field(default_factory=dict)
    render: dict | None = None  # data from a simulator: its render record (`world_modality.sim.check_dataset`)

    def format(self) -> str:
        lines = [
            f"dataset   {self.repo_id}  ({self.root})",
            f"episodes  {self.episodes}",
            f"frames    {self.frames}",
            f"fps       {self.fps}",
            f"tasks     {len(self.tasks)}",
        ]
        lines += [f"          - {t}" for t in self.tasks[:10]]
        if len(self.tasks) > 10:
            lines.append(f"          ... and {len(self.tasks) - 10} more")
        lines.append("keys used by the pipeline")
        lines += [f"  {role:12s} {key}" for role, key in self.keys.items()]
        if self.render:
            lines.append(f"render    {self.render}")
        lines.append("features")
        for name, ft in self.features.items():
            lines.append(f"  {name:36s} {ft['dtype']:8s} {tuple(ft.get('shape') or ())}")
        return "\n".join(lines)


def camera_name(key: str) -> str:
    """The camera a dataset camera key names (``observation.images.<camera>``), as simulators render it."""
    return key.removeprefix(f"{OBS_IMAGES}.")


def _camera_keys(features: dict) -> list[str]:
    return [k for k, ft in features.items() if ft.get("dtype") in CAMERA_DTYPES]


def check_dataset(path_or_repo_id: str | Path, keys: DatasetKeys | None = None) -> DatasetSummary:
    """Validate a dataset against what the pipeline needs; raise DatasetSchemaError naming what exists.

    Checks of data from a simulator (and its render record) are `world_modality.sim.check_dataset`'s."""
    keys = keys or DatasetKeys()
    root, repo_id = resolve_dataset_root(path_or_repo_id)
    info = dataset_info(root)
    version = str(info["codebase_version"])
    if not version.startswith("v3"):
        raise DatasetSchemaError(
            f"{root} is a LeRobot {version} dataset; the pipeline reads v3.x. Convert it with LeRobot's "
            "`lerobot.scripts.convert_dataset_v21_to_v30`."
        )
    features: dict = info["features"]
    existing = ", ".join(sorted(features))
    cameras = _camera_keys(features)

    def require(role: str, key: str, flag: str) -> None:
        if key not in features:
            raise DatasetSchemaError(
                f"{role} key {key!r} is not in the dataset (pass {flag} with one of the existing keys: {existing})"
            )

    image = keys.image or (cameras[0] if cameras else None)
    if image is None:
        raise DatasetSchemaError(f"the dataset has no image or video feature; its keys are: {existing}")
    require("image", image, "--image-key")
    if features[image]["dtype"] not in CAMERA_DTYPES:
        raise DatasetSchemaError(
            f"--image-key {image!r} is a {features[image]['dtype']} feature, not a camera; cameras: {cameras}"
        )
    resolved = {"image": image}
    if keys.wrist:
        require("wrist image", keys.wrist, "--wrist-key")
        resolved["wrist"] = keys.wrist
    for role, key, dim, flag in (
        ("state", keys.state, keys.state_dim, "--state-key"),
        ("action", keys.action, keys.action_dim, "--action-key"),
    ):
        require(role, key, flag)
        shape = tuple(features[key]["shape"])
        if dim is not None and shape != (dim,):
            raise DatasetSchemaError(f"{role} key {key!r} has shape {shape}, expected ({dim},)")
        resolved[role] = key
    require("episode index", "episode_index", "(no flag: every LeRobot dataset has it)")

    tasks = _instructions(root, features, keys.instruction, existing)
    if len(tasks) == 1 and not keys.single_instruction:
        _refuse_one_instruction_beside_varying_text(root, features, keys.instruction, tasks[0])
    resolved["instruction"] = keys.instruction
    return DatasetSummary(
        root=root,
        repo_id=repo_id,
        fps=int(info["fps"]),
        episodes=int(info["total_episodes"]),
        frames=int(info["total_frames"]),
        tasks=tasks,
        keys=resolved,
        features=features,
    )


def task_instructions(root: Path) -> dict[int, str]:
    """``task_index`` -> instruction, from LeRobot v3's meta/tasks.parquet (the text may be the index or a column)."""
    import pandas as pd

    table = pd.read_parquet(root / "meta" / "tasks.parquet")
    names = table["task"] if "task" in table.columns else pd.Series(table.index, index=table.index)
    return {int(i): str(t) for i, t in zip(table["task_index"], names, strict=True)}


def _instructions(root: Path, features: dict, key: str, existing: str) -> list[str]:
    """The distinct instructions; LeRobot v3 stores them in meta/tasks.parquet behind ``task_index``."""
    import pandas as pd

    if key == "task":
        if "task_index" not in features or not (root / "meta" / "tasks.parquet").exists():
            raise DatasetSchemaError(
                f"instruction key 'task' is missing: the dataset has no task_index / meta/tasks.parquet. "
                f"Existing keys: {existing}"
            )
        tasks = list(task_instructions(root).values())
    elif key in features:
        if features[key].get("dtype") != "string":
            raise DatasetSchemaError(
                f"instruction key {key!r} is a {features[key].get('dtype')} feature of shape {tuple(features[key].get('shape') or ())}, "
                f"not text. Pass --instruction-key with a string feature or 'task' (LeRobot's instruction, from meta/tasks.parquet); "
                f"string features here: {[k for k, ft in features.items() if ft.get('dtype') == 'string'] or 'none'}"
            )
        data_files = sorted((root / "data").rglob("*.parquet"))
        column = pd.concat(pd.read_parquet(f, columns=[key]) for f in data_files)[key]
        tasks = sorted({str(v) for v in column})
    else:
        available = existing + (", task (from meta/tasks.parquet)" if "task_index" in features else "")
        raise DatasetSchemaError(
            f"instruction key {key!r} is not in the dataset; existing keys: {available}. "
            "LeRobot-format datasets (LIBERO included) keep the instruction under 'task': pass --instruction-key task."
        )
    empty = [t for t in tasks if not t.strip()]
    if not tasks or empty:
        raise DatasetSchemaError(
            f"instruction key {key!r} holds {'no values' if not tasks else f'{len(empty)} empty value(s)'}: "
            "a policy would be trained on empty prompts. Fix the dataset's instructions."
        )
    return tasks


def _refuse_one_instruction_beside_varying_text(root: Path, features: dict, key: str, instruction: str) -> None:
    """Refuse a dataset whose every episode has the one instruction under ``key`` while another text column holds
    one value per episode that differs between episodes: its instructions are likely there, and a policy trained on
    ``key`` would get one prompt for every task."""
    import pandas as pd

    others = [k for k, ft in features.items() if ft.get("dtype") == "string" and k != key]
    if not others:
        return
    table = pd.concat(
        pd.read_parquet(f, columns=["episode_index", *others]) for f in sorted((root / "data").rglob("*.parquet"))
    )
    per_episode = table.groupby("episode_index")[others].nunique()
    varying = {
        column: sorted({str(v) for v in table[column]})
        for column in others
        if (per_episode[column] == 1).all() and table[column].nunique() > 1
    }
    if not varying:
        return
    (column, values), *more = varying.items()
    shown = ", ".join(repr(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")
    also = f" (other text columns that differ: {', '.join(name for name, _ in more)})" if more else ""
    raise DatasetSchemaError(
        f"every episode has the same instruction under {key!r} ({instruction!r}), while the text column {column!r} "
        f"differs between episodes ({len(values)} values: {shown}){also}: a policy trained on {key!r} would get one "
        f"prompt for every task. Pass --instruction-key {column} (to `wm data check`, `wm latents` and `wm train` "
        f"alike), or --single-instruction if every episode really has the instruction {instruction!r}."
    )
