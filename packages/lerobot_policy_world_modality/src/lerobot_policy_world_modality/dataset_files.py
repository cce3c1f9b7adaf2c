"""What the policies need to know of a LeRobot v3 dataset's files: where its root is and its fingerprint
(which a latent cache records, so a cache is never used with another dataset)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lerobot_policy_world_modality.errors import InputError, MissingFileError

# What every LeRobot v3 meta/info.json holds and the pipeline reads.
INFO_KEYS = ("codebase_version", "features", "fps", "total_episodes", "total_frames", "data_path")


class DatasetSchemaError(InputError):
    """The dataset lacks something the pipeline needs."""


def resolve_dataset_root(path_or_repo_id: str | Path) -> tuple[Path, str]:
    """A local folder, or a repo id already in the LeRobot cache; nothing is downloaded."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists():
        if not (path / "meta" / "info.json").exists():
            raise DatasetSchemaError(
                f"{path} is not a LeRobot dataset: meta/info.json is missing. Point to the dataset root "
                "(the folder holding meta/, data/ and videos/ or images/)."
            )
        return path.resolve(), f"local/{path.name}"
    from lerobot.utils.constants import HF_LEROBOT_HOME

    cached = Path(HF_LEROBOT_HOME) / str(path_or_repo_id)
    if (cached / "meta" / "info.json").exists():
        return cached, str(path_or_repo_id)
    raise MissingFileError(
        f"no dataset at {path_or_repo_id!r}: not a local folder, and not in the LeRobot cache ({cached}). "
        "Datasets are never downloaded here; copy it to a local folder and pass that path."
    )


def dataset_info(dataset: str | Path) -> dict[str, Any]:
    """A dataset's meta/info.json, or a `DatasetSchemaError` saying what it lacks."""
    root, _ = resolve_dataset_root(dataset)
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetSchemaError(
            f"{path} is not valid JSON ({e}): the dataset's metadata is damaged; copy the dataset "
            "again from its source or regenerate it"
        ) from None
    missing = [k for k in INFO_KEYS if not isinstance(info, dict) or k not in info]
    if missing or not isinstance(info["features"], dict) or not info["features"]:
        found = ", ".join(sorted(info)) if isinstance(info, dict) and info else "nothing"
        raise DatasetSchemaError(
            f"{path} is not a LeRobot v3 dataset's info.json: it lacks {', '.join(missing) or 'features (empty)'} "
            f"(it holds {found}). Write datasets with LeRobot (LeRobotDataset.create / `wm data metaworld`), or convert "
            "an older one with `lerobot.scripts.convert_dataset_v21_to_v30`."
        )
    return info


def dataset_fingerprint(dataset: str | Path) -> str:
    """Hash of meta/info.json, meta/episodes and the names and sizes of the data and video files.

    Anything under ``world_latents/`` is ignored, so caching latents does not change it.
    """
    root, _ = resolve_dataset_root(dataset)
    h = hashlib.sha256((root / "meta" / "info.json").read_bytes())
    for path in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    for folder in ("data", "videos"):
        for path in sorted(p for p in (root / folder).rglob("*") if p.is_file()):
            h.update(f"{path.relative_to(root).as_posix()}:{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]
