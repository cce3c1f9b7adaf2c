"""world_modality.data.merge: shards appended in order give the dataset one LeRobot writer would have
written, at a cost per shard that does not grow with what is already merged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from world_modality.data.merge import DatasetAppender, ShardMismatch


def _features(size: int, video: bool) -> dict:
    return {
        "image": {
            "dtype": "video" if video else "image",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        },
        "state": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
    }


def _episodes(task: str, count: int, frames: int, size: int, seed: int) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    return [
        [
            {
                "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "state": rng.standard_normal(2).astype(np.float32),
                "task": task,
            }
            for _ in range(frames)
        ]
        for _ in range(count)
    ]


def _write(root: Path, episodes: list[list[dict]], size: int, video: bool = False, data_mb: int | None = None) -> Path:
    """One LeRobot dataset written by LeRobot's own recording writer."""
    from lerobot.datasets import LeRobotDataset

    dataset = LeRobotDataset.create(
        repo_id=f"local/{root.name}",
        fps=10,
        features=_features(size, video),
        root=root,
        robot_type="test",
        use_videos=video,
        video_backend="pyav",
        data_files_size_in_mb=data_mb,
    )
    for episode in episodes:
        for frame in episode:
            dataset.add_frame(dict(frame))
        dataset.save_episode()
    dataset.finalize()
    return root


def _bytes_read() -> int:
    """Bytes this process has read through read()/pread() so far (Linux), page cache included."""
    return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))


def _load(root: Path):
    from lerobot.datasets import LeRobotDataset

    return LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")


def test_merged_shards_equal_one_writer_writing_every_episode(tmp_path):
    plan = [("pick the cube", 2, 7), ("open the door", 1, 5), ("pick the cube", 2, 6)]  # task, episodes, frames
    parts = [_episodes(task, count, frames, 16, seed) for seed, (task, count, frames) in enumerate(plan)]
    shards = [_write(tmp_path / f"shard{i}", part, 16) for i, part in enumerate(parts)]
    reference = _write(tmp_path / "reference", [episode for part in parts for episode in part], 16)

    merged = DatasetAppender(tmp_path / "merged", repo_id="local/merged")
    assert [merged.append(shard) for shard in shards] == [2, 1, 2]
    merged.finalize()

    root = tmp_path / "merged"
    data = "data/chunk-000/file-000.parquet"
    assert pq.read_table(root / data).equals(pq.read_table(reference / data))
    assert pq.ParquetFile(root / data).metadata.num_row_groups == 5  # one per episode, as LeRobot writes
    episodes_file = "meta/episodes/chunk-000/file-000.parquet"
    got, want = (pq.read_table(r / episodes_file) for r in (root, reference))
    assert got.column_names == want.column_names
    for column in want.column_names:
        a, b = got.column(column).to_pylist(), want.column(column).to_pylist()
        if column.startswith("stats/"):  # renumbered stats of the index columns differ by rounding only
            np.testing.assert_allclose(
                np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-12, atol=1e-12, err_msg=column
            )
        else:
            assert a == b, column
    info, want_info = (json.loads((r / "meta/info.json").read_text()) for r in (root, reference))
    assert info == want_info and info["total_episodes"] == 5 and info["total_tasks"] == 2
    # The recording writer aggregates its in-memory (float32) episode stats, the merge the stored ones.
    stats, want_stats = (json.loads((r / "meta/stats.json").read_text()) for r in (root, reference))
    assert stats.keys() == want_stats.keys()
    for feature in want_stats:
        for name, value in want_stats[feature].items():
            np.testing.assert_allclose(stats[feature][name], value, rtol=1e-6, atol=1e-9, err_msg=f"{feature}/{name}")
    assert pd.read_parquet(root / "meta/tasks.parquet").equals(pd.read_parquet(reference / "meta/tasks.parquet"))

    ds = _load(root)
    last = ds[len(ds) - 1]
    assert len(ds) == 7 + 7 + 5 + 6 + 6 and int(last["episode_index"]) == 4 and last["task"] == "pick the cube"
    np.testing.assert_array_equal(last["state"].numpy(), parts[2][1][-1]["state"])
    first_of_door = ds.meta.episodes[2]["dataset_from_index"]
    assert first_of_door == 14 and ds[first_of_door]["task"] == "open the door"
    np.testing.assert_array_equal(
        (ds[first_of_door]["image"] * 255).round().byte().permute(1, 2, 0).numpy(), parts[1][0][0]["image"]
    )


def test_appending_reads_only_the_new_shard_and_leaves_finished_files_alone(tmp_path):
    # ~0.3 MB shards into 1 MB files: three shards share a data file, then the merge moves to the next.
    parts = [_episodes("t", 1, 25, 64, i) for i in range(8)]
    shards = [_write(tmp_path / f"shard{i}", part, 64, data_mb=1) for i, part in enumerate(parts)]
    merged = DatasetAppender(tmp_path / "merged", repo_id="local/merged")
    read_per_frame, finished = [], {}
    for shard in shards:
        frames_before = merged._dst.info.total_frames if merged._dst else 0
        before = _bytes_read()
        merged.append(shard)
        read_per_frame.append((_bytes_read() - before) / (merged._dst.info.total_frames - frames_before))
        files = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "merged" / "data").rglob("*.parquet")}
        for path, state in finished.items():
            assert files[path] == state, f"{path} was written again after it was finished"
        finished = {p: s for p, s in files.items() if p != max(files)}  # all but the open file
    merged.finalize()
    # Counted, not timed: every append after the first (which also pays one-time imports) reads about
    # the same per frame, so nothing merged before is read again.
    assert max(read_per_frame[1:]) <= 1.5 * min(read_per_frame[1:]), read_per_frame
    assert len(list((tmp_path / "merged" / "data").rglob("*.parquet"))) >= 2
    ds = _load(tmp_path / "merged")
    assert len(ds) == 200 and ds.meta.total_episodes == 8
    assert sorted({ds.meta.episodes[i]["data/file_index"] for i in range(8)}) == list(range(len(finished) + 1))
    np.testing.assert_array_equal(
        (ds[199]["image"] * 255).round().byte().permute(1, 2, 0).numpy(), parts[7][0][-1]["image"]
    )


def test_video_shards_keep_their_frames(tmp_path):
    shards = [_write(tmp_path / f"shard{i}", _episodes(f"task {i}", 1, 6, 32, i), 32, video=True) for i in range(2)]
    merged = DatasetAppender(tmp_path / "merged", repo_id="local/merged")
    for shard in shards:
        merged.append(shard)
    merged.finalize()
    ds, second = _load(tmp_path / "merged"), _load(shards[1])
    assert ds.meta.total_episodes == 2 and len(ds) == 12
    assert ds.meta.episodes[1]["videos/image/file_index"] == 1  # one video file per shard
    np.testing.assert_array_equal(ds[6 + 3]["image"].numpy(), second[3]["image"].numpy())
    assert ds[6 + 3]["task"] == "task 1"


def test_mismatched_shards_and_an_empty_merge_are_refused(tmp_path):
    merged = DatasetAppender(tmp_path / "merged", repo_id="local/merged")
    with pytest.raises(ValueError, match="no shard was appended"):
        merged.finalize()
    merged.append(_write(tmp_path / "a", _episodes("t", 1, 3, 16, 0), 16))
    with pytest.raises(ShardMismatch, match="does not match the first shard"):
        merged.append(_write(tmp_path / "b", _episodes("t", 1, 3, 24, 0), 24))
