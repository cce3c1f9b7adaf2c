"""One LeRobot v3 dataset from whole datasets (shards) appended in order, at a cost per shard that does not
grow with what is already merged.

LeRobot's ``aggregate_datasets`` does the same bookkeeping, but its data step re-embeds every image row
through ``datasets`` and rewrites the growing destination file for each source (measured: ~11 ms per
128 px frame on the project's CPU machine, super-linear in the shards). Here the shards' parquet row
groups are copied with pyarrow into open writers (images stay the stored PNG bytes; only ``index``,
``episode_index`` and ``task_index`` are renumbered, as LeRobot's ``update_data_df`` does), and
everything else is LeRobot's own: ``aggregate_videos`` (one video file per shard) and
``update_meta_data`` for the episode table. The dataset stats are aggregated from the renumbered episode
stats, as LeRobot's recording writer does (``finalize_aggregation`` would aggregate the shards' stats,
whose ``index``/``episode_index``/``task_index`` describe each shard's own numbering).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lerobot_policy_world_modality.errors import InputError


class ShardMismatch(InputError):
    """A shard does not have the fps, robot type or features of the first one."""


def _shard_metadata(root: Path, repo_id: str):
    """LeRobot's metadata of a local dataset, with its episode table read by pandas: LeRobot reads it
    through ``datasets``, whose feature bookkeeping costs ~0.8 s per shard (2/3 of appending one)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.io_utils import load_info, load_stats, load_tasks
    from lerobot.datasets.utils import EPISODES_DIR

    class ShardMetadata(LeRobotDatasetMetadata):
        def _load_metadata(self) -> None:
            self.info = load_info(self.root)
            self.tasks = load_tasks(self.root)
            files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
            self.episodes = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            self.stats = load_stats(self.root)

    return ShardMetadata(repo_id, root=root)


class _RotatingParquetWriter:
    """Appends tables to ``<root>/<template>`` files, moving to the next file (and chunk) before a
    placement would take the current file past ``max_bytes``, as LeRobot rotates its files."""

    def __init__(self, root: Path, template: str, max_bytes: int, chunk_size: int) -> None:
        self._root, self._template, self._max_bytes, self._chunk_size = root, template, max_bytes, chunk_size
        self.chunk = self.file = 0
        self._placed_bytes = 0
        self._writer: pq.ParquetWriter | None = None

    def place(self, nbytes: int) -> tuple[int, int]:
        """The (chunk, file) the next ``nbytes`` (a source file's size) go to."""
        from lerobot.datasets.utils import update_chunk_file_indices

        if self._placed_bytes and self._placed_bytes + nbytes >= self._max_bytes:
            self.close()
            self.chunk, self.file = update_chunk_file_indices(self.chunk, self.file, self._chunk_size)
            self._placed_bytes = 0
        self._placed_bytes += nbytes
        return self.chunk, self.file

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            path = self._root / self._template.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            # LeRobot's writer settings; the schema carries the `datasets` features (image columns).
            self._writer = pq.ParquetWriter(path, schema=table.schema, compression="snappy", use_dictionary=True)
        self._writer.write_table(table.select(self._writer.schema.names).cast(self._writer.schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class DatasetAppender:
    """Builds the LeRobot v3 dataset at ``root`` (which must not exist) from shards appended in order:
    episode ``i`` of the k-th shard becomes episode ``(episodes of shards before k) + i``. All shards must
    share fps, robot type and features. ``finalize`` writes tasks, info and stats; until then the dataset
    is incomplete."""

    def __init__(self, root: Path, repo_id: str) -> None:
        self.root = Path(root)
        self.repo_id = repo_id
        self._first = None  # the first shard's metadata: every later one must match it
        self._dst = None
        self._stats: dict | None = None
        self._data: _RotatingParquetWriter | None = None
        self._episodes: _RotatingParquetWriter | None = None
        self._videos_idx: dict = {}

    def _start(self, first) -> None:
        from lerobot.datasets.aggregate import merge_video_feature_info_for_aggregate
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
        from lerobot.datasets.utils import DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH

        features = merge_video_feature_info_for_aggregate([first])
        video_keys = [key for key, ft in features.items() if ft["dtype"] == "video"]
        self._dst = LeRobotDatasetMetadata.create(
            repo_id=self.repo_id,
            fps=first.fps,
            robot_type=first.robot_type,
            features=features,
            root=self.root,
            use_videos=bool(video_keys),
            chunks_size=first.chunks_size,
            data_files_size_in_mb=first.data_files_size_in_mb,
            video_files_size_in_mb=first.video_files_size_in_mb,
        )
        self._dst.tasks = pd.DataFrame({"task_index": pd.Series([], dtype="int64")}, index=pd.Index([], name="task"))
        mb = 1024**2
        self._data = _RotatingParquetWriter(
            self.root, DEFAULT_DATA_PATH, self._dst.data_files_size_in_mb * mb, self._dst.chunks_size
        )
        self._episodes = _RotatingParquetWriter(
            self.root, DEFAULT_EPISODES_PATH, self._dst.data_files_size_in_mb * mb, self._dst.chunks_size
        )
        self._videos_idx = {
            key: {"chunk": 0, "file": 0, "latest_duration": 0, "episode_duration": 0} for key in video_keys
        }

    def _check(self, src) -> None:
        from lerobot.datasets.feature_utils import features_equal_for_merge

        first = self._first
        if (src.fps, src.robot_type) != (first.fps, first.robot_type) or not features_equal_for_merge(
            first.features, src.features
        ):
            raise ShardMismatch(
                f"shard {src.root} (fps {src.fps}, robot {src.robot_type!r}) does not match the first shard "
                f"{first.root} (fps {first.fps}, robot {first.robot_type!r}) in fps, robot type or features; "
                "shards must be written from one feature spec"
            )

    def append(self, shard: Path) -> int:
        """Append all episodes of the LeRobot dataset at ``shard``; returns how many."""
        from lerobot.datasets.aggregate import aggregate_videos, update_meta_data
        from lerobot.datasets.utils import DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH

        src = _shard_metadata(Path(shard), self.repo_id)
        if self._dst is None:
            self._first = src
            self._start(src)
        else:
            self._check(src)
        dst = self._dst
        new_tasks = [t for t in src.tasks.index if t not in dst.tasks.index]
        dst.tasks = pd.concat(
            [
                dst.tasks,
                pd.DataFrame(
                    {"task_index": range(len(dst.tasks), len(dst.tasks) + len(new_tasks))},
                    index=pd.Index(new_tasks, name="task"),
                ),
            ]
        )

        self._videos_idx = aggregate_videos(
            src, dst, self._videos_idx, dst.video_files_size_in_mb, dst.chunks_size, concatenate_videos=False
        )

        # A shard's task index -> the dataset's (what LeRobot's update_data_df does, without pandas per row group).
        task_map = dst.tasks.loc[src.tasks.sort_values("task_index").index, "task_index"].to_numpy()
        src_to_dst = {}
        for chunk, file in _files(src.episodes, "data"):
            path = src.root / DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file)
            src_to_dst[(chunk, file)] = self._data.place(path.stat().st_size)
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):  # one episode each, as LeRobot writes them
                self._data.write(
                    _renumbered(parquet.read_row_group(group), dst.info.total_episodes, dst.info.total_frames, task_map)
                )

        data_idx = {"chunk": self._data.chunk, "file": self._data.file, "src_to_dst": src_to_dst}
        for chunk, file in _files(src.episodes, "meta/episodes"):
            path = src.root / DEFAULT_EPISODES_PATH.format(chunk_index=chunk, file_index=file)
            where = self._episodes.place(path.stat().st_size)
            episodes = update_meta_data(pd.read_parquet(path), dst, {"chunk": 0, "file": 0}, data_idx, self._videos_idx)
            episodes["meta/episodes/chunk_index"], episodes["meta/episodes/file_index"] = where
            # Without pandas' schema metadata, as LeRobot's recording writer stores the episode table.
            table = pa.Table.from_pandas(episodes, preserve_index=False).replace_schema_metadata(None)
            self._episodes.write(table)
            self._add_stats(table)

        dst.info.total_episodes += src.total_episodes
        dst.info.total_frames += src.total_frames
        return src.total_episodes

    def _add_stats(self, episodes: pa.Table) -> None:
        from lerobot.datasets.compute_stats import aggregate_stats
        from lerobot.utils.utils import unflatten_dict

        columns = [name for name in episodes.column_names if name.startswith("stats/")]
        rows = [
            unflatten_dict({name: np.array(value) for name, value in row.items()})["stats"]
            for row in episodes.select(columns).to_pylist()
        ]
        self._stats = aggregate_stats(rows if self._stats is None else [self._stats, *rows])

    def finalize(self) -> None:
        from lerobot.datasets.io_utils import write_info, write_stats, write_tasks

        if self._dst is None:
            raise InputError(f"no shard was appended to {self.root}; a dataset needs at least one episode")
        self._data.close()
        self._episodes.close()
        info = self._dst.info
        info.total_tasks = len(self._dst.tasks)
        info.splits = {"train": f"0:{info.total_episodes}"}
        write_tasks(self._dst.tasks, self.root)
        write_info(info, self.root)
        write_stats(self._stats, self.root)


def _renumbered(table: pa.Table, episode_offset: int, frame_offset: int, task_map: np.ndarray) -> pa.Table:
    """A shard's rows with the dataset's episode, frame and task indices."""
    new = {
        "episode_index": pc.add(table["episode_index"], episode_offset),
        "index": pc.add(table["index"], frame_offset),
        "task_index": pa.array(task_map[table["task_index"].to_numpy()], table.schema.field("task_index").type),
    }
    for name, column in new.items():
        position = table.schema.get_field_index(name)
        table = table.set_column(position, table.schema.field(position), column)
    return table


def _files(episodes, prefix: str) -> list[tuple[int, int]]:
    """The (chunk, file) pairs an episode table points to under ``prefix``, in order."""
    return sorted(set(zip(episodes[f"{prefix}/chunk_index"], episodes[f"{prefix}/file_index"], strict=True)))
