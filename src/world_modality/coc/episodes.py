"""Episodes of a LeRobot dataset as CoC backends see them: low-dimensional columns read once from
the parquet files (no image decoded), camera frames decoded only for the keyframes asked for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lerobot.utils.constants import OBS_STATE

from lerobot_policy_world_modality.errors import InputError
from world_modality.data.check import DatasetKeys, DatasetSchemaError
from world_modality.sim import check_dataset
from world_modality.sim.metaworld.generate import SIDECAR
from world_modality.training.data import DatasetImages, read_frame_table


@dataclass
class Episode:
    index: int
    instruction: str
    rows: np.ndarray  # [T] global frame indices (the dataset's ``index``), in time order
    state: np.ndarray  # [T, S] the source's state key (MetaWorld's 39-dim environment state for `events`)
    action: np.ndarray  # [T, A]; the last value is the gripper effort (> 0 closes)
    task: str | None  # the MetaWorld task name, when the dataset was made by `wm data metaworld`
    success: bool | None  # None: the dataset does not record it

    def __len__(self) -> int:
        return len(self.rows)


class EpisodeSource:
    """The episodes of one dataset, with ``state_key`` as each episode's state."""

    def __init__(self, dataset: str | Path, state_key: str = OBS_STATE, camera_key: str | None = None) -> None:
        summary = check_dataset(dataset, DatasetKeys(image=camera_key))
        self.root, self.camera_key, self.state_key = summary.root, summary.keys["image"], state_key
        self.features = summary.features  # check a backend's needs here before the columns are read
        self._table = None
        self._images: DatasetImages | None = None

    def _columns(self):
        if self._table is None:
            if self.state_key not in self.features:
                raise DatasetSchemaError(
                    f"{self.root} has no {self.state_key!r} column; its features are {sorted(self.features)}"
                )
            table = read_frame_table(self.root, DatasetKeys(state=self.state_key))
            episode = table.episode_index.numpy()
            starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
            ends = np.r_[starts[1:], len(episode)]
            self._bounds = {int(episode[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}
            self._sidecar = self._read_sidecar()
            self._table = table
        return self._table

    def _read_sidecar(self) -> dict[int, dict]:
        path = self.root / SIDECAR
        if not path.exists():
            return {}
        sidecar = json.loads(path.read_text())
        # `wm data metaworld` stores only episodes in which the scripted expert succeeded.
        success = True if sidecar.get("source") == "metaworld-scripted-experts" else None
        return {
            int(e["episode_index"]): {"task": e.get("task"), "success": success} for e in sidecar.get("episodes", [])
        }

    @property
    def episode_indices(self) -> list[int]:
        self._columns()
        return sorted(self._bounds)

    def episode(self, index: int) -> Episode:
        table = self._columns()
        if index not in self._bounds:
            raise InputError(
                f"episode {index} is not in {self.root} (it has episodes {self.episode_indices[0]}..{self.episode_indices[-1]})"
            )
        start, end = self._bounds[index]
        meta = self._sidecar.get(index, {})
        return Episode(
            index=index,
            instruction=table.instruction[start],
            rows=np.arange(start, end),
            state=table.state[start:end].numpy(),
            action=table.action[start:end].numpy(),
            task=meta.get("task"),
            success=meta.get("success"),
        )

    def frames(self, episode: Episode, frame_indices: list[int]) -> list[np.ndarray]:
        """uint8 [H, W, 3] camera frames at these frame indices of the episode."""
        if self._images is None:
            self._images = DatasetImages(self.root, [self.camera_key])
        rows = episode.rows[np.asarray(frame_indices, dtype=np.int64)]
        images = self._images.frames(torch.as_tensor(rows))[self.camera_key]  # float [K, 3, H, W] in [0, 1]
        return list((images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
