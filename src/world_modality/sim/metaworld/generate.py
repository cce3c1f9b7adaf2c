"""Expert demonstrations from MetaWorld's scripted policies, written as a LeRobot v3 dataset.

Work is staged per task: each task's successful episodes are written atomically to
``.<name>.staging/<task>.npz`` next to the output, so an interrupted run resumes by skipping staged
tasks. Only when every task is staged is the LeRobot dataset written into a temporary folder and
renamed to the output path, so a dataset at the output path is always complete.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
from tqdm import tqdm

from world_modality import __version__
from world_modality.atomic_io import atomic_write_json
from world_modality.sim.metaworld.env import (
    ACTION_DIM,
    ENV_STATE_DIM,
    STATE_DIM,
    MetaWorldEnv,
    RenderSettings,
    agent_state,
    expert_policy,
    layout_sequence,
)
from world_modality.sim.metaworld.tasks import instruction, resolve_tasks

FPS = 80  # MetaWorld's render_fps, as in LeRobot's MetaworldEnv
SIDECAR = "meta/world_modality.json"
STATE_KEY, ENV_STATE_KEY, ACTION_KEY = OBS_STATE, OBS_ENV_STATE, ACTION
INSTRUCTION_KEY = "task"


def image_key(camera: str) -> str:
    return f"{OBS_IMAGES}.{camera}"


class DatasetSpecMismatch(ValueError):
    """An existing dataset or staging folder was made with a different spec."""


@dataclass(frozen=True)
class MetaWorldDatasetSpec:
    """Everything that determines the content of a generated dataset (worker count excluded)."""

    tasks: tuple[str, ...]
    episodes_per_task: int
    seed: int
    render: RenderSettings
    storage: Literal["video", "image"] = "image"
    fps: int = FPS

    def __post_init__(self):
        if self.episodes_per_task < 1:
            raise ValueError(f"--episodes-per-task must be at least 1, got {self.episodes_per_task}")
        if self.storage not in ("video", "image"):
            raise ValueError(f"storage must be 'video' or 'image', got {self.storage!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["render"] = self.render.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MetaWorldDatasetSpec:
        return cls(**{**d, "tasks": tuple(d["tasks"]), "render": RenderSettings.from_dict(d["render"])})


def _spec_differences(old: dict, new: dict) -> list[str]:
    return [
        f"{key}: existing {old.get(key)!r} vs requested {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def record_expert_episode(env: MetaWorldEnv, task: str, layout: int) -> tuple[dict[str, np.ndarray], bool]:
    """Roll out the scripted expert on one layout; return the frames and whether it succeeded."""
    policy = expert_policy(task)
    obs = env.reset(layout)
    cams = env.render.cameras
    images: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    states, env_states, actions = [], [], []
    success = done = False
    while not done:
        for cam, img in env.frames().items():
            images[cam].append(img)
        action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
        states.append(agent_state(obs))
        env_states.append(obs)
        actions.append(action)
        obs, success, done = env.step(action)
    episode = {f"image.{c}": np.stack(images[c]) for c in cams}
    episode.update(state=np.stack(states), env_state=np.stack(env_states), action=np.stack(actions))
    return episode, success


def generate_task(
    task: str,
    spec: MetaWorldDatasetSpec,
    staging_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate ``spec.episodes_per_task`` successful expert episodes of one task into a staged npz."""
    max_attempts = 2 * spec.episodes_per_task + 20
    kept: list[dict[str, np.ndarray]] = []
    origins: list[tuple[int, int]] = []
    attempts = 0
    env: MetaWorldEnv | None = None
    for seed, layout in layout_sequence(spec.seed):
        if len(kept) == spec.episodes_per_task or attempts == max_attempts:
            break
        if env is None or env.seed != seed:
            if env is not None:
                env.close()
            env = MetaWorldEnv(task, seed, spec.render)
        episode, success = record_expert_episode(env, task, layout)
        attempts += 1
        if success:
            kept.append(episode)
            origins.append((seed, layout))
        if on_progress:
            on_progress(task, len(kept), attempts)
    if env is not None:
        env.close()
    lengths = np.array([len(e["action"]) for e in kept], dtype=np.int64)
    arrays = {k: np.concatenate([e[k] for e in kept]) for k in kept[0]} if kept else {}
    arrays.update(lengths=lengths, origins=np.array(origins, dtype=np.int64).reshape(-1, 2))
    tmp = staging_dir / f".{task}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, staging_dir / f"{task}.npz")
    summary = {"task": task, "kept": len(kept), "discarded": attempts - len(kept), "attempts": attempts}
    atomic_write_json(staging_dir / f"{task}.json", summary)
    return summary


def _worker(args) -> dict:
    task, spec_dict, staging_dir, progress_queue = args
    spec = MetaWorldDatasetSpec.from_dict(spec_dict)
    return generate_task(
        task, spec, Path(staging_dir), lambda t, k, a: progress_queue.put((t, k, a))
    )


def _check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".wm-write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {parent} is not writable ({e.strerror}); choose another --out") from e


def _prepare_output(out: Path, spec: MetaWorldDatasetSpec, overwrite: bool) -> bool:
    """Return True when a complete dataset with this spec already exists at ``out``."""
    if not out.exists():
        return False
    sidecar = out / SIDECAR
    if sidecar.exists():
        existing = json.loads(sidecar.read_text())["spec"]
        diffs = _spec_differences(existing, spec.to_dict())
        if not diffs:
            return True
        if not overwrite:
            raise DatasetSpecMismatch(
                f"a dataset with a different spec already exists at {out}:\n  " + "\n  ".join(diffs)
                + "\nChoose another --out, or pass --overwrite to replace it."
            )
    elif any(out.iterdir()) and not overwrite:
        raise DatasetSpecMismatch(
            f"{out} exists and is not a dataset made by `wm data metaworld`; choose another --out "
            "or pass --overwrite to replace it"
        )
    shutil.rmtree(out)
    return False


def _prepare_staging(staging: Path, spec: MetaWorldDatasetSpec, overwrite: bool) -> None:
    spec_file = staging / "spec.json"
    if spec_file.exists():
        diffs = _spec_differences(json.loads(spec_file.read_text()), spec.to_dict())
        if diffs and not overwrite:
            raise DatasetSpecMismatch(
                f"an interrupted generation with a different spec is staged at {staging}:\n  "
                + "\n  ".join(diffs)
                + "\nRerun with the original options to resume it, or pass --overwrite to discard it."
            )
        if diffs:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_file, spec.to_dict())


def _features(spec: MetaWorldDatasetSpec) -> dict:
    r = spec.render
    features = {
        image_key(cam): {
            "dtype": "video" if spec.storage == "video" else "image",
            "shape": (r.height, r.width, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in r.cameras
    }
    features[STATE_KEY] = {"dtype": "float32", "shape": (STATE_DIM,), "names": ["x", "y", "z", "gripper"]}
    features[ENV_STATE_KEY] = {"dtype": "float32", "shape": (ENV_STATE_DIM,), "names": None}
    features[ACTION_KEY] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "gripper"]}
    return features


def _write_lerobot_dataset(out: Path, spec: MetaWorldDatasetSpec, staging: Path, summaries: list[dict]) -> None:
    from lerobot.datasets import LeRobotDataset

    tmp = out.parent / f".{out.name}.writing"
    if tmp.exists():
        shutil.rmtree(tmp)
    dataset = LeRobotDataset.create(
        repo_id=f"local/{out.name}",
        fps=spec.fps,
        features=_features(spec),
        root=tmp,
        robot_type="sawyer",
        use_videos=spec.storage == "video",
        video_backend="pyav",  # torchcodec needs system FFmpeg libraries; PyAV ships its own
    )
    episodes = []
    total = sum(s["kept"] for s in summaries)
    with tqdm(total=total, desc="writing LeRobot dataset", unit="ep") as bar:
        for task in spec.tasks:
            staged = np.load(staging / f"{task}.npz")
            bounds = np.concatenate([[0], np.cumsum(staged["lengths"])])
            text = instruction(task)
            for i, (seed, layout) in enumerate(staged["origins"]):
                lo, hi = bounds[i], bounds[i + 1]
                for t in range(lo, hi):
                    frame = {image_key(c): staged[f"image.{c}"][t] for c in spec.render.cameras}
                    frame[STATE_KEY] = staged["state"][t]
                    frame[ENV_STATE_KEY] = staged["env_state"][t]
                    frame[ACTION_KEY] = staged["action"][t]
                    frame["task"] = text
                    dataset.add_frame(frame)
                dataset.save_episode()
                episodes.append(
                    {
                        "episode_index": len(episodes),
                        "task": task,
                        "seed": int(seed),
                        "layout_index": int(layout),
                        "length": int(hi - lo),
                    }
                )
                bar.update()
    dataset.finalize()
    atomic_write_json(
        tmp / SIDECAR,
        {
            "generator": f"world-modality-vla {__version__}",
            "source": "metaworld-scripted-experts",
            "spec": spec.to_dict(),
            "keys": {
                "images": {c: image_key(c) for c in spec.render.cameras},
                "state": STATE_KEY,
                "environment_state": ENV_STATE_KEY,
                "action": ACTION_KEY,
                "instruction": INSTRUCTION_KEY,
            },
            "per_task": {s["task"]: {k: s[k] for k in ("kept", "discarded", "attempts")} for s in summaries},
            "train_layouts": {
                task: sorted({(e["seed"], e["layout_index"]) for e in episodes if e["task"] == task})
                for task in spec.tasks
            },
            "episodes": episodes,
        },
    )
    os.replace(tmp, out)


def generate_metaworld_dataset(
    out: str | Path,
    tasks: str | list[str],
    episodes_per_task: int,
    cameras: tuple[str, ...] = ("corner2",),
    image_size: int = 128,
    seed: int = 0,
    render_quality: Literal["fast", "default"] = "fast",
    storage: Literal["video", "image"] = "image",
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Generate (or resume generating) an expert dataset; returns the per-task summary."""
    spec = MetaWorldDatasetSpec(
        tasks=tuple(resolve_tasks(tasks)),
        episodes_per_task=episodes_per_task,
        seed=seed,
        render=RenderSettings.preset(render_quality, cameras=tuple(cameras), width=image_size, height=image_size),
        storage=storage,
    )
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out).resolve()
    _check_writable(out)
    if _prepare_output(out, spec, overwrite):
        print(f"{out} is already complete with this spec; nothing to do.")
        return json.loads((out / SIDECAR).read_text())["per_task"]
    staging = out.parent / f".{out.name}.staging"
    _prepare_staging(staging, spec, overwrite)

    todo = [t for t in spec.tasks if not (staging / f"{t}.json").exists()]
    if len(todo) < len(spec.tasks):
        print(f"resuming: {len(spec.tasks) - len(todo)} of {len(spec.tasks)} tasks already generated")
    _run_tasks(todo, spec, staging, workers)

    summaries = [json.loads((staging / f"{t}.json").read_text()) for t in spec.tasks]
    empty = [s["task"] for s in summaries if s["kept"] == 0]
    if empty:
        raise RuntimeError(f"the scripted expert never succeeded on {empty}; no episodes to write")
    _write_lerobot_dataset(out, spec, staging, summaries)
    shutil.rmtree(staging)
    per_task = {s["task"]: {k: s[k] for k in ("kept", "discarded", "attempts")} for s in summaries}
    for task, s in per_task.items():
        note = "" if s["kept"] == episodes_per_task else f"  (only {s['kept']} of {episodes_per_task} requested)"
        print(f"  {task:32s} kept {s['kept']:4d}  discarded {s['discarded']:3d}{note}")
    print(f"dataset written to {out}")
    return per_task


def _run_tasks(todo: list[str], spec: MetaWorldDatasetSpec, staging: Path, workers: int) -> None:
    if not todo:
        return
    bars: dict[str, tqdm] = {}

    def progress(task: str, kept: int, attempts: int) -> None:
        if task not in bars:
            bars[task] = tqdm(total=spec.episodes_per_task, desc=task, unit="ep", leave=True)
        bar = bars[task]
        bar.n = kept
        bar.set_postfix(discarded=attempts - kept, refresh=False)
        bar.refresh()

    try:
        if workers == 1:
            for task in todo:
                generate_task(task, spec, staging, progress)
            return
        ctx = mp.get_context("spawn")  # fresh OpenGL contexts per worker; fork would share them
        with ctx.Manager() as manager, ctx.Pool(min(workers, len(todo))) as pool:
            q = manager.Queue()
            pending = pool.map_async(_worker, [(t, spec.to_dict(), str(staging), q) for t in todo])
            while True:
                try:
                    progress(*q.get(timeout=0.2))
                except queue.Empty:
                    if pending.ready():
                        break
            while not q.empty():
                progress(*q.get())
            pending.get()  # re-raise a worker's exception
    finally:
        for bar in bars.values():
            bar.close()
