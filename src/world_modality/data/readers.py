"""Reading whole episodes of one feature (camera or vector) straight from a LeRobot v3 dataset's files."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lerobot_policy_world_modality.dataset_files import DatasetSchemaError, dataset_info, resolve_dataset_root
from lerobot_policy_world_modality.encoders.spec import camera_parts, side_by_side

_VIDEO_TOLERANCE_S = 1e-4  # LeRobotDataset's default


class EpisodeReader:
    """Reads one feature (camera or vector) of whole episodes from a LeRobot v3 dataset's files:
    parquet columns directly, PNG cells decoded in a thread pool, videos through LeRobot's decoder."""

    def __init__(self, dataset: str | Path, key: str) -> None:
        self.root, _ = resolve_dataset_root(dataset)
        self.info: dict[str, Any] = dataset_info(self.root)
        features = self.info["features"]
        if key not in features:
            raise DatasetSchemaError(
                f"key {key!r} is not in the dataset {self.root}; existing keys: {', '.join(sorted(features))}"
            )
        self.key = key
        self.dtype: str = features[key]["dtype"]
        self.shape = tuple(features[key]["shape"])
        self.episodes = self._episode_table()

    def _episode_table(self) -> pd.DataFrame:
        columns = [
            "episode_index",
            "length",
            "dataset_from_index",
            "dataset_to_index",
            "data/chunk_index",
            "data/file_index",
        ]
        if self.dtype == "video":
            columns += [f"videos/{self.key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        files = sorted((self.root / "meta" / "episodes").rglob("*.parquet"))
        table = pd.concat([pd.read_parquet(f, columns=columns) for f in files]).sort_values("dataset_from_index")
        table = table.reset_index(drop=True)
        self._by_index = table.set_index("episode_index", drop=False)
        starts, ends = table["dataset_from_index"].to_numpy(), table["dataset_to_index"].to_numpy()
        total = int(self.info["total_frames"])
        if len(table) == 0 or starts[0] != 0 or ends[-1] != total or (starts[1:] != ends[:-1]).any():
            raise DatasetSchemaError(
                f"{self.root}: episodes do not tile the global frame index 0..{total} contiguously; the latent cache "
                "needs row = global frame index"
            )
        return table

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    def read(self, episodes: pd.DataFrame) -> list[np.ndarray]:
        """Per episode (rows of `episodes`, in order; only their ``episode_index`` is read, so rows of another
        camera's reader do too): uint8 frames [T, H, W, 3] or vectors [T, D]."""
        episodes = self._by_index.loc[episodes["episode_index"].to_numpy()]
        tables = {}
        columns = ["index", "episode_index"] + (["timestamp"] if self.dtype == "video" else [self.key])
        for (chunk, file), group in episodes.groupby(["data/chunk_index", "data/file_index"]):
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            wanted = [int(e) for e in group["episode_index"]]
            tables.update(self._split(pq.read_table(path, columns=columns, filters=[("episode_index", "in", wanted)])))
        out = []
        for _, ep in episodes.iterrows():
            table = tables.get(int(ep["episode_index"]))
            rows = 0 if table is None else table.num_rows
            if rows != ep["length"]:
                raise DatasetSchemaError(
                    f"{self.root}: episode {ep['episode_index']} has {rows} rows in the data files, its metadata says {ep['length']}"
                )
            out.append(self._values(table, ep))
        return out

    @staticmethod
    def _split(table: pa.Table) -> dict[int, pa.Table]:
        """Episode index -> its rows in frame order (episodes are contiguous runs of the global index)."""
        table = table.sort_by("index")
        ids, first, counts = np.unique(table.column("episode_index").to_numpy(), return_index=True, return_counts=True)
        return {int(e): table.slice(start, n) for e, start, n in zip(ids, first, counts)}

    def _values(self, table: pa.Table, episode: pd.Series) -> np.ndarray:
        if self.dtype == "image":
            cells = table.column(self.key).combine_chunks().field("bytes").to_pylist()
            if any(c is None for c in cells):
                raise DatasetSchemaError(f"{self.root}: {self.key} has image cells without embedded bytes")
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                return np.stack(list(pool.map(_decode_image, cells)))
        if self.dtype == "video":
            from lerobot.datasets.video_utils import decode_video_frames

            prefix = f"videos/{self.key}/"
            path = self.root / self.info["video_path"].format(
                video_key=self.key,
                chunk_index=int(episode[prefix + "chunk_index"]),
                file_index=int(episode[prefix + "file_index"]),
            )
            timestamps = (table.column("timestamp").to_numpy() + episode[prefix + "from_timestamp"]).tolist()
            # PyAV ships its own FFmpeg; torchcodec needs the system's (and prints pages when it lacks them).
            frames = decode_video_frames(path, timestamps, _VIDEO_TOLERANCE_S, backend="pyav", return_uint8=True)
            return frames.permute(0, 2, 3, 1).numpy()
        column = table.column(self.key).combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32)  # a writable copy


class SideBySideReader:
    """wrist_mode=concat: two cameras of a dataset read as one virtual camera, frames side by side."""

    def __init__(self, dataset: str | Path, key: str) -> None:
        self._left, self._right = (EpisodeReader(dataset, k) for k in camera_parts(key))
        if (self._left.dtype, self._left.shape) != (self._right.dtype, self._right.shape):
            raise DatasetSchemaError(
                f"{key}: the two cameras differ ({self._left.key}: {self._left.dtype} {self._left.shape}, "
                f"{self._right.key}: {self._right.dtype} {self._right.shape})"
            )
        self.root, self.info, self.episodes, self.dtype, self.key = (
            self._left.root,
            self._left.info,
            self._left.episodes,
            self._left.dtype,
            key,
        )
        height, width, channels = self._left.shape
        self.shape = (height, 2 * width, channels)

    @property
    def num_frames(self) -> int:
        return self._left.num_frames

    def read(self, episodes: pd.DataFrame) -> list[np.ndarray]:
        return [side_by_side(a, b) for a, b in zip(self._left.read(episodes), self._right.read(episodes), strict=True)]


def _decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# --- computing a cache -----------------------------------------------------------------------
