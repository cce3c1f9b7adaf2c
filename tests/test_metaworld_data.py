"""`wm data metaworld` and `wm data check`: content, orientation, replay, resume and errors."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import TINY_EPISODES, TINY_SIZE, TINY_TASKS
from lerobot_policy_world_modality.dataset_files import dataset_fingerprint
from world_modality.atomic_io import UnwritableOutput
from world_modality.data.check import DatasetKeys, DatasetSchemaError, check_dataset
from world_modality.data.merge import DatasetAppender
from world_modality.sim.metaworld import generate as metaworld_gen
from world_modality.sim.metaworld.env import MetaWorldEnv, RenderSettings
from world_modality.sim.metaworld.generate import (
    SIDECAR,
    DatasetSpecMismatch,
    generate_metaworld_dataset,
)
from world_modality.sim.metaworld.tasks import instruction, resolve_tasks


def _load(root):
    from lerobot.datasets import LeRobotDataset

    return LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")


def _frame_hwc(item, key) -> np.ndarray:
    """LeRobot returns frames as float CHW in [0, 1]; back to the uint8 HWC the simulator rendered."""
    return (item[key] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _wood_and_robot(img: np.ndarray) -> tuple[float, float, float, float]:
    """Fractions of wooden-table pixels in the top/bottom half and red-robot pixels in the left/right half."""
    f = img.astype(int)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    wood = (r > g + 15) & (g > b + 10) & (r < 200) & (r > 70)
    red = (r > 120) & (g < 60) & (b < 60)
    h, w = r.shape
    return wood[: h // 2].mean(), wood[h // 2 :].mean(), red[:, : w // 2].mean(), red[:, w // 2 :].mean()


def test_dataset_loads_offline_with_expected_schema(metaworld_dataset):
    ds = _load(metaworld_dataset)
    sidecar = json.loads((metaworld_dataset / SIDECAR).read_text())
    assert ds.meta.total_episodes == len(TINY_TASKS) * TINY_EPISODES
    assert ds.fps == 80
    item = ds[0]
    assert tuple(item["observation.images.corner2"].shape) == (3, TINY_SIZE, TINY_SIZE)
    assert tuple(item["observation.state"].shape) == (4,)
    assert tuple(item["observation.environment_state"].shape) == (39,)
    assert tuple(item["action"].shape) == (4,)
    # The instruction is LeRobot's description of the task, stored under `task`.
    tasks_by_episode = {e["episode_index"]: e["task"] for e in sidecar["episodes"]}
    for idx in (0, len(ds) - 1):
        it = ds[idx]
        assert it["task"] == instruction(tasks_by_episode[int(it["episode_index"])])
    # observation.state is the first 4 values of the privileged observation.
    np.testing.assert_allclose(item["observation.state"].numpy(), item["observation.environment_state"][:4].numpy())
    assert np.abs(ds.hf_dataset.with_format("numpy")["action"]).max() <= 1.0
    assert sidecar["per_task"] == {t: {"kept": 2, "discarded": 0, "attempts": 2} for t in TINY_TASKS}
    assert sidecar["spec"]["render"]["msaa_samples"] == 0 and sidecar["spec"]["render"]["shadows"] is False
    assert {tuple(x) for x in sidecar["train_layouts"]["reach-v3"]} == {(0, 0), (0, 1)}


def test_frames_are_upright_and_show_the_recorded_layout(metaworld_dataset):
    ds = _load(metaworld_dataset)
    sidecar = json.loads((metaworld_dataset / SIDECAR).read_text())
    render = RenderSettings.from_dict(sidecar["spec"]["render"])
    for episode in sidecar["episodes"][::TINY_EPISODES]:
        first = ds.meta.episodes[episode["episode_index"]]["dataset_from_index"]
        img = _frame_hwc(ds[first], "observation.images.corner2")
        wood_top, wood_bottom, red_left, red_right = _wood_and_robot(img)
        # Upright corner2: the table fills the lower half, the robot arm stands on the left.
        assert wood_bottom > 3 * wood_top and wood_bottom > 0.3, (wood_top, wood_bottom)
        assert red_left > 2 * red_right, (red_left, red_right)
        # The stored frame is exactly what the simulator renders for the recorded (task, seed, layout).
        env = MetaWorldEnv(episode["task"], episode["seed"], render)
        env.reset(episode["layout_index"])
        np.testing.assert_array_equal(env.frames()["corner2"], img)
        env.close()


def test_replayed_actions_reproduce_success(metaworld_dataset):
    ds = _load(metaworld_dataset)
    data = ds.hf_dataset.with_format("numpy")
    sidecar = json.loads((metaworld_dataset / SIDECAR).read_text())
    replayed_tasks = set()
    for episode in sidecar["episodes"]:
        if episode["task"] in replayed_tasks:
            continue
        replayed_tasks.add(episode["task"])
        meta = ds.meta.episodes[episode["episode_index"]]
        lo, hi = meta["dataset_from_index"], meta["dataset_to_index"]
        actions, env_states = data["action"][lo:hi], data["observation.environment_state"][lo:hi]
        env = MetaWorldEnv(episode["task"], episode["seed"], render=None)
        obs = env.reset(episode["layout_index"])
        successes = []
        for t, action in enumerate(actions):
            np.testing.assert_allclose(obs, env_states[t], atol=1e-5)
            obs, success, _ = env.step(action)
            successes.append(success)
        env.close()
        assert successes[-1] and not any(successes[:-1]), "success must come exactly at the last recorded step"
    assert replayed_tasks == set(TINY_TASKS)


def test_multi_camera_video_storage(tmp_path):
    out = tmp_path / "video"
    generate_metaworld_dataset(
        out, "reach", 1, cameras=("corner2", "gripperPOV"), image_size=32, storage="video", seed=3
    )
    ds = _load(out)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.gripperPOV"]["dtype"] == "video"
    item = ds[0]
    assert tuple(item["observation.images.gripperPOV"].shape) == (3, 32, 32)
    assert not np.array_equal(item["observation.images.corner2"].numpy(), item["observation.images.gripperPOV"].numpy())
    assert json.loads((out / SIDECAR).read_text())["episodes"][0]["seed"] == 3


def test_rerun_with_same_spec_is_a_no_op_and_different_spec_is_refused(metaworld_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(metaworld_dataset, copy)
    before = sorted(p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file())
    generate_metaworld_dataset(copy, list(TINY_TASKS), TINY_EPISODES, image_size=TINY_SIZE, seed=0)
    assert sorted(p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()) == before
    with pytest.raises(DatasetSpecMismatch, match=r"episodes_per_task: existing 2 vs requested 3"):
        generate_metaworld_dataset(copy, list(TINY_TASKS), 3, image_size=TINY_SIZE, seed=0)
    assert sorted(p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()) == before
    assert not (tmp_path / ".copy.staging").exists()


def test_interrupted_run_resumes_without_regenerating_finished_tasks(tmp_path, monkeypatch):
    out = tmp_path / "resumable"
    real_generate = metaworld_gen.generate_task
    calls = []

    def interrupted_after_first_task(task, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return real_generate(task, *args, **kwargs)

    monkeypatch.setattr(metaworld_gen, "generate_task", interrupted_after_first_task)
    with pytest.raises(KeyboardInterrupt):
        generate_metaworld_dataset(out, "reach,push", 1, image_size=32)
    # Nothing at the output path pretends to be a dataset; the finished task is staged as a LeRobot shard.
    assert not out.exists()
    staged = tmp_path / ".resumable.staging"
    assert (staged / "reach-v3" / "meta" / "info.json").exists() and (staged / "reach-v3.json").exists()
    assert not (staged / "push-v3.json").exists()

    calls.clear()

    def counting(task, *args, **kwargs):
        calls.append(task)
        return real_generate(task, *args, **kwargs)

    monkeypatch.setattr(metaworld_gen, "generate_task", counting)
    generate_metaworld_dataset(out, "reach,push", 1, image_size=32)
    assert calls == ["push-v3"]
    assert _load(out).meta.total_episodes == 2
    assert not (tmp_path / ".resumable.staging").exists()


def test_interruption_while_writing_leaves_no_dataset(tmp_path, monkeypatch):
    out = tmp_path / "midwrite"
    from lerobot.datasets import LeRobotDataset

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(LeRobotDataset, "finalize", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_metaworld_dataset(out, "reach", 1, image_size=32)
    assert not out.exists()


def test_parallel_workers_write_the_dataset_one_process_writes(tmp_path, caplog):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    generate_metaworld_dataset(serial, "drawer-close,reach", 1, image_size=32)
    with caplog.at_level(logging.DEBUG, logger=metaworld_gen.__name__):
        per_task = generate_metaworld_dataset(parallel, "drawer-close,reach", 1, image_size=32, workers=2)
    assert set(per_task) == {"reach-v3", "drawer-close-v3"}
    # The benchmark times episodes by these records.
    assert {r.getMessage() for r in caplog.records} >= {
        "drawer-close-v3: episode 1 written",
        "reach-v3: episode 1 written",
    }
    assert dataset_fingerprint(parallel) == dataset_fingerprint(serial)
    for table in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        assert pq.read_table(parallel / table).equals(pq.read_table(serial / table)), table
    for name in ("meta/info.json", "meta/stats.json", SIDECAR):
        assert json.loads((parallel / name).read_text()) == json.loads((serial / name).read_text()), name
    ds = _load(parallel)
    assert ds.meta.total_episodes == 2 and ds[len(ds) - 1]["task"] == instruction("reach-v3")
    assert not (tmp_path / ".parallel.staging").exists() and not (tmp_path / ".parallel.tmp").exists()


def _bytes_read() -> int:
    """Bytes this process has read through read()/pread() so far (Linux), page cache included."""
    return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))


def test_bytes_read_per_frame_written_do_not_grow_with_the_episodes(tmp_path, monkeypatch, metaworld_dataset):
    """Counted, not timed: writing an episode into its shard and appending a shard to the dataset read no
    more per frame for 4 episodes per task than for 1 (re-reading earlier episodes would). The session's
    dataset (a fixture) has already imported and run the writer, so one-time reads are not counted."""
    reads: list[tuple[str, float]] = []
    write_episode, append = metaworld_gen._write_episode, DatasetAppender.append

    def counted_write(dataset, episode, *args):
        before = _bytes_read()
        write_episode(dataset, episode, *args)
        reads.append(("episode", (_bytes_read() - before) / len(episode["action"])))

    def counted_append(self, shard):
        frames, before = self._dst.info.total_frames if self._dst else 0, _bytes_read()
        episodes = append(self, shard)
        reads.append(("shard", (_bytes_read() - before) / (self._dst.info.total_frames - frames)))
        return episodes

    monkeypatch.setattr(metaworld_gen, "_write_episode", counted_write)
    monkeypatch.setattr(DatasetAppender, "append", counted_append)
    per_frame = {}
    for episodes in (1, 4):
        reads.clear()
        generate_metaworld_dataset(tmp_path / f"e{episodes}", "reach", episodes, image_size=32)
        per_frame[episodes] = {kind: max(r for k, r in reads if k == kind) for kind in ("episode", "shard")}
    assert len(reads) == 4 + 1
    for kind in ("episode", "shard"):
        assert per_frame[4][kind] <= 1.5 * per_frame[1][kind], per_frame


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": "pick-place-v9"}, "unknown MetaWorld task or task set 'pick-place-v9'"),
        ({"tasks": ""}, "no MetaWorld task given"),
        ({"episodes_per_task": 0}, "episodes_per_task: expected an integer >= 1, got 0"),
        ({"cameras": ("corner5",)}, r"unknown MetaWorld camera\(s\) \['corner5'\]"),
        ({"workers": 0}, "workers: expected an integer >= 1, got 0"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kwargs, message):
    args = {"out": tmp_path / "bad", "tasks": "reach", "episodes_per_task": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_metaworld_dataset(**args)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UnwritableOutput, match=f"cannot write to {blocker}: a file stands where a folder is expected"):
        generate_metaworld_dataset(blocker / "ds", "reach", 1)


def test_foreign_folder_at_output_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetSpecMismatch, match="is not a dataset made by `wm data metaworld`"):
        generate_metaworld_dataset(tmp_path, "reach", 1)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_workers_take_the_costliest_tasks_first():
    assert metaworld_gen.costliest_first(resolve_tasks("reach,box-close,handle-press,push-back")) == [
        "box-close-v3",
        "push-back-v3",
        "reach-v3",
        "handle-press-v3",
    ]
    assert len(metaworld_gen.costliest_first(resolve_tasks("MT50"))) == 50  # every task has a cost


def test_task_resolution():
    assert len(resolve_tasks("MT50")) == 50
    assert resolve_tasks("MT10")[:3] == ["reach-v3", "push-v3", "pick-place-v3"]
    assert len(resolve_tasks("very_hard")) == 5 and len(resolve_tasks("easy")) == 28
    assert resolve_tasks("reach, reach-v3,push") == ["reach-v3", "push-v3"]


def test_check_reports_summary_and_names_existing_keys(metaworld_dataset):
    summary = check_dataset(metaworld_dataset, DatasetKeys(state_dim=4, action_dim=4))
    assert summary.episodes == 4 and summary.keys["image"] == "observation.images.corner2"
    assert sorted(summary.tasks) == sorted(instruction(t) for t in TINY_TASKS)
    with pytest.raises(
        DatasetSchemaError,
        match=r"instruction key 'instruction' is not in the dataset.*task \(from meta/tasks.parquet\)",
    ):
        check_dataset(metaworld_dataset, DatasetKeys(instruction="instruction"))
    with pytest.raises(DatasetSchemaError, match=r"state key 'observation.state' has shape \(4,\), expected \(8,\)"):
        check_dataset(metaworld_dataset, DatasetKeys(state_dim=8))
    with pytest.raises(
        DatasetSchemaError,
        match=r"wrist image key 'observation.images.image2' is not in the dataset.*observation.images.corner2",
    ):
        check_dataset(metaworld_dataset, DatasetKeys(wrist="observation.images.image2"))


def test_check_refuses_empty_instructions(metaworld_dataset, tmp_path):
    copy = tmp_path / "empty_task"
    shutil.copytree(metaworld_dataset, copy)
    tasks = pd.read_parquet(copy / "meta" / "tasks.parquet")  # instructions are the index
    tasks.index = pd.Index(["", " "], name="task")
    tasks.to_parquet(copy / "meta" / "tasks.parquet")
    with pytest.raises(DatasetSchemaError, match="holds 2 empty value"):
        check_dataset(copy)


def test_cli_help_and_check(metaworld_dataset, capsys):
    from world_modality import cli

    # The installed entry point as a process once; the rest in this process (each process costs the imports).
    out = subprocess.run([sys.executable, "-m", "world_modality.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: wm" in out.stdout
    for args in (["data", "--help"], ["data", "metaworld", "--help"], ["data", "check", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        assert exit_.value.code == 0 and "usage: wm" in capsys.readouterr().out
    assert cli.main(["data", "check", str(metaworld_dataset), "--instruction-key", "instruction"]) == 2
    assert "existing keys" in capsys.readouterr().err
    assert cli.main(["data", "metaworld", "--tasks", "nope", "--out", "/tmp/unused-wm"]) == 2
    assert "unknown MetaWorld task or task set 'nope'" in capsys.readouterr().err
