"""LIBERO-format datasets (LeRobot's ``HuggingFaceVLA/libero`` / ``lerobot/libero`` layout).

Keys: ``observation.images.image`` (agentview) and ``observation.images.image2`` (wrist), both
rotated 180 degrees from LIBERO's raw render; ``observation.state`` (8) and ``action`` (7);
instruction under ``task``. A dataset is LIBERO-format when every instruction is a LIBERO task's.
Its render record (cameras, size, rotation) comes from the data itself: the rotation is detected by
comparing the dataset's first frames with the simulator's render of the same task's scene, raw and
rotated (`detect_rotation`).

`generate_libero_dataset` writes a small dataset of this schema from the real LIBERO envs driven by a
smooth random policy (for tests and smoke runs; it is not expert data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from lerobot_policy_world_modality.dataset_files import DatasetSchemaError, dataset_fingerprint
from lerobot_policy_world_modality.errors import InputError, OutputExistsError
from world_modality.atomic_io import atomic_write_json, commit_folder, mark_output, record_digests, temp_folder, writing
from world_modality.data.check import DatasetSummary, camera_name
from world_modality.data.integrity import DATASET_KIND
from world_modality.locks import writer_lock

IMAGE_KEY = f"{OBS_IMAGES}.image"  # agentview
WRIST_KEY = f"{OBS_IMAGES}.image2"
ORIENTATION_FILE = "world_latents/libero_orientation.json"  # beside the latent caches; not part of the fingerprint
# Frames whose correlation with the rotated reference beats the raw one by less than this are ambiguous.
ORIENTATION_MARGIN = 0.15
_COMPARE_SIZE = 32


def libero_instructions(instructions: list[str]) -> dict[str, tuple[str, str]]:
    """Instruction -> (suite, task name) for the instructions that are LIBERO tasks'."""
    from world_modality.sim.libero.env import find_task

    return {text: found for text in instructions if (found := find_task(text)) is not None}


def _grey_small(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> zero-mean unit-norm grey [32, 32] (block means), for correlations."""
    from PIL import Image

    grey = np.asarray(
        Image.fromarray(frame).convert("L").resize((_COMPARE_SIZE, _COMPARE_SIZE), Image.BILINEAR), dtype=np.float64
    )
    grey -= grey.mean()
    return grey / (np.linalg.norm(grey) + 1e-9)


def rotation_scores(frames: list[np.ndarray], reference_raw: np.ndarray) -> tuple[float, float]:
    """Mean correlation of ``frames`` with the simulator's raw reference frame and with it rotated 180 degrees."""
    raw, rotated = _grey_small(reference_raw), _grey_small(np.ascontiguousarray(reference_raw[::-1, ::-1]))
    small = [_grey_small(f) for f in frames]
    return float(np.mean([(f * raw).sum() for f in small])), float(np.mean([(f * rotated).sum() for f in small]))


def detect_rotation(
    root: Path, camera_keys: list[str], instruction_key: str = "task", episodes: int = 3
) -> dict[str, bool]:
    """Per camera key: whether the dataset's frames are rotated 180 degrees from LIBERO's raw render.

    The first frames of up to ``episodes`` episodes of the dataset's first task (its instruction under
    ``instruction_key``) are compared with the
    simulator's render of that task (init state 0, settled), raw and rotated; objects move between
    init states but table, walls and robot dominate both images. An unclear verdict is an error.
    """
    from world_modality.data.readers import EpisodeReader
    from world_modality.sim.libero.env import LiberoEnv, LiberoRenderSettings

    readers = {key: EpisodeReader(root, key) for key in camera_keys}
    table = next(iter(readers.values())).episodes
    tasks = _episode_tasks(root, instruction_key)
    first_task = tasks[int(table["episode_index"].iloc[0])]
    chosen = table[[tasks[int(e)] == first_task for e in table["episode_index"]]].iloc[:episodes]
    found = libero_instructions([first_task])
    if not found:
        raise InputError(f"{root}: the instruction {first_task!r} is not a LIBERO task's; cannot render its scene")
    suite, task = found[first_task]
    height, width = readers[camera_keys[0]].shape[:2]
    render = LiberoRenderSettings(
        cameras=tuple(camera_name(k) for k in camera_keys), width=width, height=height, rotate_180=False
    )
    env = LiberoEnv(suite, task, render)
    try:
        reference = env.frames(env.reset(0))
    finally:
        env.close()
    verdict = {}
    for key, reader in readers.items():
        if reader.shape[:2] != (height, width):
            raise InputError(
                f"{root}: cameras differ in size ({camera_keys[0]} {height}x{width}, {key} {reader.shape[:2]})"
            )
        first_frames = [frames[0] for frames in reader.read(chosen)]
        raw, rotated = rotation_scores(first_frames, reference[camera_name(key)])
        if abs(rotated - raw) < ORIENTATION_MARGIN:
            raise InputError(
                f"{root}: cannot tell whether {key} is rotated like LeRobot's LIBERO datasets: its first frames correlate "
                f"{raw:.2f} with LIBERO's raw render of {suite}/{task} and {rotated:.2f} with the rotated one"
            )
        verdict[key] = rotated > raw
    return verdict


def _episode_tasks(root: Path, instruction_key: str) -> dict[int, str]:
    """episode index -> its instruction: LeRobot v3's meta/episodes ``tasks`` list for ``task``, else the first
    frame's value of the data column ``instruction_key``."""
    if instruction_key != "task":
        files = sorted((root / "data").rglob("*.parquet"))
        table = pd.concat([pd.read_parquet(f, columns=["episode_index", "index", instruction_key]) for f in files])
        first = table.sort_values("index").drop_duplicates("episode_index")
        return {int(e): str(t) for e, t in zip(first["episode_index"], first[instruction_key])}
    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    table = pd.concat([pd.read_parquet(f, columns=["episode_index", "tasks"]) for f in files])
    return {int(e): str(next(iter(t))) for e, t in zip(table["episode_index"], table["tasks"])}


def libero_render_record(root: Path, features: dict, fingerprint: str, instruction_key: str = "task") -> dict:
    """The render record of a LIBERO-format dataset (cameras, size, rotation), or an error when its
    images are not in LeRobot's rotated convention, which the LIBERO env renders. The detection is
    cached in the dataset folder, keyed by the dataset fingerprint."""
    cameras = [k for k in (IMAGE_KEY, WRIST_KEY) if k in features]
    if not cameras:
        raise InputError(
            f"{root} is a LIBERO-format dataset without {IMAGE_KEY} or {WRIST_KEY}; its keys: {', '.join(sorted(features))}"
        )
    cached = root / ORIENTATION_FILE
    stored = json.loads(cached.read_text()) if cached.exists() else {}
    if stored.get("fingerprint") == fingerprint and sorted(stored["rotated"]) == sorted(cameras):
        rotated = stored["rotated"]
    else:
        rotated = detect_rotation(root, cameras, instruction_key)
        atomic_write_json(cached, {"fingerprint": fingerprint, "rotated": rotated})
    upside_down = [k for k, r in rotated.items() if not r]
    if upside_down:
        raise InputError(
            f"{root}: {', '.join(upside_down)} hold LIBERO's raw upside-down frames, but LeRobot's LIBERO datasets and this "
            "project's LIBERO env use frames rotated 180 degrees; rotate them (img[::-1, ::-1]) and rewrite the dataset"
        )
    from world_modality.sim.libero.env import LiberoRenderSettings

    height, width = features[cameras[0]]["shape"][:2]
    return LiberoRenderSettings(
        cameras=tuple(camera_name(k) for k in cameras), width=int(width), height=int(height)
    ).to_dict()


def looks_like_libero(features: dict) -> bool:
    """LeRobot's LIBERO camera names; whether the data is LIBERO's is then told by its instructions."""
    return any(k in features for k in (IMAGE_KEY, WRIST_KEY))


def check_libero_dataset(summary: DatasetSummary, required: bool) -> dict | None:
    """LIBERO-format checks: LIBERO instructions, 8-dim proprio, 7-dim actions, frames rotated like LeRobot's
    LIBERO datasets (detected from the data against the simulator). Returns the render record, or None when
    the data only shares LeRobot's camera names and none of its instructions is a LIBERO task's (and the
    checks are not ``required``)."""
    from world_modality.sim.libero.env import ACTION_DIM, STATE_DIM

    known = libero_instructions(summary.tasks)
    if not known and not required:
        return None
    unknown = [t for t in summary.tasks if t not in known]
    if unknown:
        raise DatasetSchemaError(
            f"{len(unknown)} instruction(s) are not LIBERO tasks' (e.g. {unknown[:3]}); a LIBERO dataset's instructions "
            f"(under {summary.keys['instruction']!r}) must be the tasks' language, e.g. 'pick up the black bowl between the plate and the ramekin and place it on the plate'"
        )
    for role, dim, what in (
        ("state", STATE_DIM, "eef_pos(3) + axis-angle(3) + gripper_qpos(2)"),
        ("action", ACTION_DIM, "6 delta pose + gripper"),
    ):
        key = summary.keys[role]
        shape = tuple(summary.features[key]["shape"])
        if shape != (dim,):
            raise DatasetSchemaError(f"LIBERO {role} {key!r} has shape {shape}, expected ({dim},): {what}")
    try:
        return libero_render_record(
            summary.root, summary.features, dataset_fingerprint(summary.root), summary.keys["instruction"]
        )
    except ValueError as e:
        raise DatasetSchemaError(str(e)) from None


def generate_libero_dataset(
    out: str | Path,
    suite: str,
    tasks: list[str],
    episodes_per_task: int,
    steps: int,
    image_size: int = 64,
    seed: int = 0,
    rotate_180: bool = True,
    fps: int = 10,
) -> Path:
    """A LIBERO-schema LeRobot dataset from the real envs under a smooth random policy (init states
    0..N-1 of each task). ``rotate_180=False`` stores LIBERO's raw frames (for tests of the check)."""
    from lerobot.datasets import LeRobotDataset
    from tqdm import tqdm

    from world_modality.sim.libero.env import (
        ACTION_DIM,
        STATE_DIM,
        LiberoEnv,
        LiberoRenderSettings,
        proprio_state,
    )

    out = Path(out)
    if out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out or delete it")
    with writer_lock(out):
        image = {"dtype": "image", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]}
        features = {
            IMAGE_KEY: image,
            WRIST_KEY: image,
            OBS_STATE: {
                "dtype": "float32",
                "shape": (STATE_DIM,),
                "names": ["x", "y", "z", "ax", "ay", "az", "gripper_left", "gripper_right"],
            },
            ACTION: {
                "dtype": "float32",
                "shape": (ACTION_DIM,),
                "names": ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"],
            },
        }
        tmp = temp_folder(out)
        dataset = LeRobotDataset.create(
            repo_id=f"local/{out.name}", fps=fps, features=features, root=tmp, robot_type="panda", use_videos=False
        )
        render = LiberoRenderSettings(width=image_size, height=image_size, rotate_180=rotate_180)
        rng = np.random.default_rng(seed)
        with tqdm(total=len(tasks) * episodes_per_task, desc="LIBERO episodes", unit="ep") as bar:
            for task in tasks:
                env = LiberoEnv(suite, task, render)
                try:
                    for init_index in range(episodes_per_task):
                        raw = env.reset(init_index)
                        action = np.zeros(ACTION_DIM)
                        for _ in range(steps):
                            # Smooth random motion (an AR(1) process) with a random gripper command.
                            action = 0.8 * action + 0.2 * rng.uniform(-1, 1, ACTION_DIM)
                            action[-1] = rng.choice([-1.0, 1.0])
                            frames = env.frames(raw)
                            dataset.add_frame(
                                {
                                    IMAGE_KEY: frames["image"],
                                    WRIST_KEY: frames["image2"],
                                    OBS_STATE: proprio_state(raw),
                                    ACTION: action.astype(np.float32),
                                    "task": env.instruction,
                                }
                            )
                            raw, _, done = env.step(action)
                            if done:
                                break
                        with writing(out):
                            dataset.save_episode()
                        bar.update()
                finally:
                    env.close()
        with writing(out):
            dataset.finalize()
        mark_output(tmp, DATASET_KIND)
        record_digests(tmp)
        return commit_folder(tmp, out)
