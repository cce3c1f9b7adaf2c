"""Datasets written by LeRobot's own API with video storage and two cameras, and instructions under any key:
`wm data check`, `wm latents` (one camera and two side by side) and `wm train` take them as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

IMAGE, WRIST = "observation.images.image", "observation.images.image2"
INSTRUCTION_COLUMN = "language_instruction"


def write_video_dataset(
    root: Path, image: list[np.ndarray], wrist: list[np.ndarray], task: str, instruction: str | list[str], fps: int = 10
) -> Path:
    """A LIBERO-schema dataset through `LeRobotDataset.create(use_videos=True)`: per episode, frames [T, H, W, 3]
    of both cameras (videos), 8-dim state, 7-dim action, ``task`` and a string column with ``instruction`` (one for
    every episode, or one per episode)."""
    from lerobot.datasets import LeRobotDataset

    height, width = image[0].shape[1:3]
    camera = {"dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}
    features = {
        IMAGE: camera,
        WRIST: camera,
        "observation.state": {"dtype": "float32", "shape": (8,), "names": None},
        "action": {"dtype": "float32", "shape": (7,), "names": None},
        INSTRUCTION_COLUMN: {"dtype": "string", "shape": (1,), "names": None},
    }
    dataset = LeRobotDataset.create(
        repo_id=f"local/{root.name}", fps=fps, features=features, root=root, use_videos=True, video_backend="pyav"
    )  # torchcodec needs the system's FFmpeg
    rng = np.random.default_rng(0)
    instructions = [instruction] * len(image) if isinstance(instruction, str) else instruction
    for frames, wrist_frames, text in zip(image, wrist, instructions, strict=True):
        for a, b in zip(frames, wrist_frames, strict=True):
            dataset.add_frame(
                {
                    IMAGE: a,
                    WRIST: b,
                    "observation.state": rng.normal(size=8).astype(np.float32),
                    "action": rng.uniform(-1, 1, 7).astype(np.float32),
                    INSTRUCTION_COLUMN: text,
                    "task": task,
                }
            )
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def video_dataset(libero_home, tmp_path_factory) -> Path:
    """2 episodes x 10 frames of two 32x32 cameras, stored as video; not LIBERO's instructions (LIBERO's camera
    keys make the checks look its instructions up in LIBERO's catalogue: the session's LIBERO home)."""
    rng = np.random.default_rng(1)
    frames = [[rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]
    return write_video_dataset(
        tmp_path_factory.mktemp("video") / "two-cameras",
        *frames,
        task="stack the blocks",
        instruction="put the red block on the blue one",
    )


def test_video_dataset_goes_through_check_latents_and_train(video_dataset, tmp_path, capsys):
    from lerobot_policy_world_modality.latent_cache import LatentCache
    from world_modality.cli import main
    from world_modality.data.readers import EpisodeReader, SideBySideReader

    assert main(["data", "check", str(video_dataset)]) == 0
    assert "OK: the dataset has what the pipeline needs" in capsys.readouterr().out
    # Any camera's reader takes the episode rows of another's (each reads its own video columns).
    image, wrist = EpisodeReader(video_dataset, IMAGE), EpisodeReader(video_dataset, WRIST)
    assert [f.shape for f in wrist.read(image.episodes)] == [(10, 32, 32, 3)] * 2
    both = SideBySideReader(video_dataset, f"{IMAGE}+image2").read(image.episodes)
    np.testing.assert_array_equal(both[1][:, :, 32:], wrist.read(image.episodes)[1])

    for camera, width in ((IMAGE, 32), (f"{IMAGE}+image2", 64)):
        out = tmp_path / f"latents-{width}"
        assert (
            main(
                [
                    "latents",
                    str(video_dataset),
                    "--encoder",
                    "learned",
                    "--camera-key",
                    camera,
                    "--learned-steps",
                    "2",
                    "--batch-size",
                    "8",
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        cache = LatentCache.load(out, dataset=video_dataset)
        assert len(cache) == 20 and cache.spec.camera_key == camera and cache.spec.input_size

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(video_dataset),
                "--latents",
                str(tmp_path / "latents-64"),
                "--model-type",
                "F",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--save-every",
                "2",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(run),
                "--instruction-key",
                INSTRUCTION_COLUMN,
            ]
        )
        == 0
    )
    config = json.loads((run / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["instruction_key"] == INSTRUCTION_COLUMN and config["instructions"] == [
        "put the red block on the blue one"
    ]


def test_instruction_keys_that_are_not_text_are_refused_by_the_check(video_dataset, capsys):
    from world_modality.cli import main

    assert main(["data", "check", str(video_dataset), "--instruction-key", "observation.state"]) == 2
    err = capsys.readouterr().err
    assert "instruction key 'observation.state' is a float32 feature of shape (8,), not text" in err
    assert "string features here: ['language_instruction']" in err and "Traceback" not in err
    assert main(["data", "check", str(video_dataset), "--instruction-key", "prompt"]) == 2
    assert "instruction key 'prompt' is not in the dataset" in capsys.readouterr().err


@pytest.mark.slow  # LIBERO renders the task's scene for the rotation check (seconds on CPU)
def test_libero_video_dataset_with_its_instructions_under_another_key(libero_dataset, tmp_path):
    """The LIBERO fixture's frames re-written as videos through LeRobot's API (two cameras), instructions only under
    `language_instruction` (`task` holds another text): the rotation check renders the scene the given key names, and
    the dataset goes through check, latents (both cameras side by side) and train."""
    from world_modality.data.check import DatasetKeys
    from world_modality.data.readers import EpisodeReader
    from world_modality.latents import compute_latents
    from world_modality.sim import check_dataset
    from world_modality.sim.libero.env import suite_tasks
    from world_modality.training.trainer import TrainOptions, train

    image, wrist = (EpisodeReader(libero_dataset, key) for key in (IMAGE, WRIST))
    instruction = suite_tasks("libero_spatial")[0].language
    video = write_video_dataset(
        tmp_path / "libero-video",
        image.read(image.episodes),
        wrist.read(wrist.episodes),
        task="a task of some robot",
        instruction=instruction,
    )
    assert check_dataset(video).render is None  # under 'task' no LIBERO instruction: not LIBERO-format data
    keys = DatasetKeys(instruction=INSTRUCTION_COLUMN)
    summary = check_dataset(video, keys)
    assert summary.tasks == [instruction]
    assert summary.render == {
        "simulator": "libero",
        "cameras": ["image", "image2"],
        "width": 64,
        "height": 64,
        "rotate_180": True,
    }
    latents = compute_latents(
        video,
        "learned",
        camera_key=f"{IMAGE}+image2",
        learned_steps=2,
        batch_size=8,
        progress=False,
        instruction_key=INSTRUCTION_COLUMN,
    )
    spec = json.loads((latents / "spec.json").read_text())["encoder"]
    assert spec["render"]["cameras"] == ["image", "image2", "image+image2"] and spec["render"]["simulator"] == "libero"
    train(
        TrainOptions(
            dataset=str(video),
            latents=str(latents),
            out=str(tmp_path / "run"),
            model_type="F",
            steps=2,
            batch_size=4,
            save_every=2,
            keys=keys,
            device="cpu",
            progress=False,
        )
    )
    config = json.loads((tmp_path / "run" / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["instructions"] == [instruction] and config["encoder_spec"]["render"]["simulator"] == "libero"
