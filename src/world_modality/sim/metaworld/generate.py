"""Expert demonstrations from MetaWorld's scripted policies, written as a LeRobot v3 dataset.

Work is staged per task: each task's successful episodes are written, as they are recorded, by
LeRobot's own writer into a dataset shard ``.<name>.staging/<task>/`` next to the output (in the worker
process that generates the task, so frames are encoded in parallel), and ``<task>.json`` beside it marks
the task done; an interrupted run resumes by skipping those tasks. The shards are appended in task order
to ``.<name>.tmp`` (`atomic_io.temp_folder`) as soon as they and all tasks before them are staged (world_modality.data.merge,
constant cost per episode), and that folder is renamed to the output path when every task is in, so a
dataset at the output path is always complete. The dataset does not depend on the worker count.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
from tqdm import tqdm

from lerobot_policy_world_modality.errors import InputError
from world_modality import __version__
from world_modality.atomic_io import (
    atomic_write_json,
    commit_folder,
    mark_output,
    output_folder,
    output_kind,
    record_digests,
    temp_folder,
    writing,
)
from world_modality.choices import Count, NonNegative, check_ranges
from world_modality.data.integrity import DATASET_KIND
from world_modality.data.merge import DatasetAppender
from world_modality.interrupts import child_processes, exit_on_sigterm
from world_modality.locks import writer_lock
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
from world_modality.workers import worker_context

FPS = 80  # MetaWorld's render_fps, as in LeRobot's MetaworldEnv
SIDECAR = "meta/world_modality.json"
STAGING_KIND = "dataset staging"  # its folder's `atomic_io.OUTPUT_MARKER`
STATE_KEY, ENV_STATE_KEY, ACTION_KEY = OBS_STATE, OBS_ENV_STATE, ACTION
INSTRUCTION_KEY = "task"

# DEBUG records "<task>: episode <k> written" as each kept episode reaches its shard (benchmarks time them).
log = logging.getLogger(__name__)

# Steps the scripted expert takes per layout (mean over layouts 0-19 of MT1 seed 0, a failure counting its
# 500 steps), i.e. the relative cost of a task. Workers take the costliest tasks first so that they finish
# together (MT50 x 20 on 16 workers, simulated: in the catalogue's order the last 10% of episodes take ~4x as
# long as the first 10%, workers idling; costliest first: ~0.9x). It orders work only: the dataset is the same.
_EXPERT_STEPS = {
    "assembly": 88,
    "basketball": 155,
    "bin-picking": 113,
    "box-close": 189,
    "button-press": 61,
    "button-press-topdown": 65,
    "button-press-topdown-wall": 57,
    "button-press-wall": 86,
    "coffee-button": 35,
    "coffee-pull": 85,
    "coffee-push": 56,
    "dial-turn": 71,
    "disassemble": 162,
    "door-close": 66,
    "door-lock": 117,
    "door-open": 123,
    "door-unlock": 46,
    "drawer-close": 79,
    "drawer-open": 89,
    "faucet-close": 65,
    "faucet-open": 60,
    "hammer": 67,
    "hand-insert": 60,
    "handle-press": 31,
    "handle-press-side": 42,
    "handle-pull": 103,
    "handle-pull-side": 80,
    "lever-pull": 77,
    "peg-insert-side": 130,
    "peg-unplug-side": 101,
    "pick-out-of-hole": 116,
    "pick-place": 53,
    "pick-place-wall": 84,
    "plate-slide": 50,
    "plate-slide-back": 61,
    "plate-slide-back-side": 46,
    "plate-slide-side": 48,
    "push": 60,
    "push-back": 187,
    "push-wall": 80,
    "reach": 46,
    "reach-wall": 44,
    "shelf-place": 88,
    "soccer": 74,
    "stick-pull": 128,
    "stick-push": 32,
    "sweep": 88,
    "sweep-into": 99,
    "window-close": 80,
    "window-open": 87,
}


def image_key(camera: str) -> str:
    return f"{OBS_IMAGES}.{camera}"


class DatasetSpecMismatch(InputError):
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
            raise InputError(f"--episodes-per-task must be at least 1, got {self.episodes_per_task}")
        if self.storage not in ("video", "image"):
            raise InputError(f"storage must be 'video' or 'image', got {self.storage!r}")
        if self.seed < 0:
            raise InputError(f"seed must be non-negative, got {self.seed}")

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


def _create_shard(root: Path, spec: MetaWorldDatasetSpec):
    from lerobot.datasets import LeRobotDataset

    return LeRobotDataset.create(
        repo_id=f"local/{root.name}",
        fps=spec.fps,
        features=_features(spec),
        root=root,
        robot_type="sawyer",
        use_videos=spec.storage == "video",
        video_backend="pyav",  # torchcodec needs system FFmpeg libraries; PyAV ships its own
    )


def _write_episode(dataset, episode: dict[str, np.ndarray], task: str, cameras: tuple[str, ...]) -> None:
    text = instruction(task)
    for t in range(len(episode["action"])):
        frame = {image_key(c): episode[f"image.{c}"][t] for c in cameras}
        frame[STATE_KEY] = episode["state"][t]
        frame[ENV_STATE_KEY] = episode["env_state"][t]
        frame[ACTION_KEY] = episode["action"][t]
        frame["task"] = text
        dataset.add_frame(frame)
    dataset.save_episode()


def generate_task(
    task: str,
    spec: MetaWorldDatasetSpec,
    staging_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate ``spec.episodes_per_task`` successful expert episodes of one task, each written as it is
    recorded into the LeRobot dataset shard ``staging_dir/<task>``; ``<task>.json`` (written last) marks it done."""
    from lerobot.utils.utils import SuppressProgressBars

    writing_dir = staging_dir / f"{task}.writing"
    if writing_dir.exists():
        shutil.rmtree(writing_dir)  # left by an interrupted run
    max_attempts = 2 * spec.episodes_per_task + 20
    episodes: list[dict] = []
    attempts = 0
    env: MetaWorldEnv | None = None
    shard = None
    with SuppressProgressBars():  # `datasets` shows a bar per saved episode
        for seed, layout in layout_sequence(spec.seed):
            if len(episodes) == spec.episodes_per_task or attempts == max_attempts:
                break
            if env is None or env.seed != seed:
                if env is not None:
                    env.close()
                env = MetaWorldEnv(task, seed, spec.render)
            episode, success = record_expert_episode(env, task, layout)
            attempts += 1
            if success:
                with writing(staging_dir / task):
                    if shard is None:
                        shard = _create_shard(writing_dir, spec)
                    _write_episode(shard, episode, task, spec.render.cameras)
                episodes.append({"seed": int(seed), "layout_index": int(layout), "length": len(episode["action"])})
            if on_progress:
                on_progress(task, len(episodes), attempts)
        if env is not None:
            env.close()
        if shard is not None:
            with writing(staging_dir / task):
                shard.finalize()
            commit_folder(
                writing_dir, staging_dir / task
            )  # replaces a shard whose summary an interruption kept from being written
    summary = {
        "task": task,
        "kept": len(episodes),
        "discarded": attempts - len(episodes),
        "attempts": attempts,
        "episodes": episodes,
    }
    atomic_write_json(staging_dir / f"{task}.json", summary)
    return summary


def _staged_summary(staging_dir: Path, task: str) -> dict | None:
    """The task's summary when its shard is complete (a summary without an episode list is from an older
    staging layout: regenerate)."""
    path = staging_dir / f"{task}.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if "episodes" in summary else None


def _worker(args) -> dict:
    task, spec_dict, staging_dir, progress_queue = args
    spec = MetaWorldDatasetSpec.from_dict(spec_dict)
    return generate_task(task, spec, Path(staging_dir), lambda t, k, a: progress_queue.put((t, k, a)))


def _prepare_output(out: Path, spec: MetaWorldDatasetSpec, overwrite: bool) -> bool:
    """Return True when a complete dataset with this spec already exists at ``out``; otherwise make room for it:
    an empty folder is removed, and with ``overwrite`` a dataset this tool wrote, never any other folder."""
    if not out.exists():
        return False
    sidecar = out / SIDECAR
    diffs = _spec_differences(json.loads(sidecar.read_text())["spec"], spec.to_dict()) if sidecar.exists() else []
    if sidecar.exists() and not diffs:
        return True
    if any(out.iterdir()):
        # Ours: it holds the marker (or, written before markers existed, the sidecar).
        what = output_kind(out)
        if what != DATASET_KIND and not sidecar.exists():
            raise DatasetSpecMismatch(
                f"{out} exists and is not a dataset made by `wm data metaworld` "
                + (f"(it holds a {what} written by `wm`)" if what else "(it holds files this tool did not write)")
                + "; --overwrite replaces only a dataset this tool wrote: choose another --out, or move that folder away"
            )
        if not overwrite:
            raise DatasetSpecMismatch(
                f"a dataset with a different spec already exists at {out}:\n  "
                + "\n  ".join(diffs or [f"it has no {SIDECAR}: incomplete or damaged"])
                + "\nChoose another --out, or pass --overwrite to replace it."
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
    output_folder(staging, STAGING_KIND)
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


def _sidecar(spec: MetaWorldDatasetSpec, summaries: list[dict]) -> dict:
    episodes = [
        {"episode_index": index, "task": s["task"], **e}
        for index, (s, e) in enumerate((s, e) for s in summaries for e in s["episodes"])
    ]
    return {
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
            task: sorted({(e["seed"], e["layout_index"]) for e in episodes if e["task"] == task}) for task in spec.tasks
        },
        "episodes": episodes,
    }


def generate_metaworld_dataset(
    out: str | Path,
    tasks: str | list[str],
    episodes_per_task: Count,
    cameras: tuple[str, ...] = ("corner2",),
    image_size: int = 128,
    seed: NonNegative = 0,
    render_quality: Literal["fast", "default"] = "fast",
    storage: Literal["video", "image"] = "image",
    workers: Count = 1,
    overwrite: bool = False,
) -> dict:
    """Generate (or resume generating) an expert dataset; returns the per-task summary."""
    check_ranges(generate_metaworld_dataset, locals())
    spec = MetaWorldDatasetSpec(
        tasks=tuple(resolve_tasks(tasks)),
        episodes_per_task=episodes_per_task,
        seed=seed,
        render=RenderSettings.preset(render_quality, cameras=tuple(cameras), width=image_size, height=image_size),
        storage=storage,
    )
    with writer_lock(out) as out:  # its staging and temporary folders beside it too
        return _generate(out, spec, workers, overwrite)


def _generate(out: Path, spec: MetaWorldDatasetSpec, workers: int, overwrite: bool) -> dict:
    if _prepare_output(out, spec, overwrite):
        print(f"{out} is already complete with this spec; nothing to do.")
        return json.loads((out / SIDECAR).read_text())["per_task"]
    staging = out.parent / f".{out.name}.staging"
    _prepare_staging(staging, spec, overwrite)

    staged = [t for t in spec.tasks if _staged_summary(staging, t)]
    if staged:
        print(f"resuming: {len(staged)} of {len(spec.tasks)} tasks already generated")
    tmp = temp_folder(out)  # an interrupted merge left there is removed; the shards it read are still staged
    dataset = DatasetAppender(tmp, repo_id=f"local/{out.name}")
    summaries = []
    total = len(spec.tasks) * spec.episodes_per_task
    with tqdm(total=total, desc="writing LeRobot dataset", unit="ep", position=0) as bar:
        for summary in _summaries_in_order(spec, staging, workers):
            summaries.append(summary)
            if summary["kept"]:
                with writing(tmp):
                    bar.update(dataset.append(staging / summary["task"]))
    empty = [s["task"] for s in summaries if s["kept"] == 0]
    if empty:
        raise RuntimeError(f"the scripted expert never succeeded on {empty}; no episodes to write")
    with writing(tmp):
        dataset.finalize()
    atomic_write_json(tmp / SIDECAR, _sidecar(spec, summaries))
    mark_output(tmp, DATASET_KIND)
    record_digests(tmp)
    commit_folder(tmp, out)
    shutil.rmtree(staging)
    per_task = {s["task"]: {k: s[k] for k in ("kept", "discarded", "attempts")} for s in summaries}
    for task, s in per_task.items():
        note = (
            "" if s["kept"] == spec.episodes_per_task else f"  (only {s['kept']} of {spec.episodes_per_task} requested)"
        )
        print(f"  {task:32s} kept {s['kept']:4d}  discarded {s['discarded']:3d}{note}")
    print(f"dataset written to {out}")
    return per_task


def _summaries_in_order(spec: MetaWorldDatasetSpec, staging: Path, workers: int) -> Iterator[dict]:
    """Each task's summary, in ``spec.tasks`` order, as soon as it and every task before it are staged;
    tasks not staged yet are generated first (in ``workers`` processes, in any order of completion)."""
    summaries = {t: s for t in spec.tasks if (s := _staged_summary(staging, t))}
    todo = [t for t in spec.tasks if t not in summaries]
    position = 0
    bars: dict[str, tqdm] = {}

    def progress(task: str, kept: int, attempts: int) -> None:
        if task not in bars:
            bars[task] = tqdm(total=spec.episodes_per_task, desc=task, unit="ep", leave=True)
        bar = bars[task]
        if kept > bar.n:
            log.debug("%s: episode %d written", task, kept)
        bar.n = kept
        bar.set_postfix(discarded=attempts - kept, refresh=False)
        bar.refresh()

    def ready() -> Iterator[dict]:
        nonlocal position
        while position < len(spec.tasks) and spec.tasks[position] in summaries:
            yield summaries[spec.tasks[position]]
            position += 1

    try:
        yield from ready()
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                summaries[task] = generate_task(task, spec, staging, progress)
                yield from ready()
            return
        ctx = worker_context()
        with ExitStack() as running:
            with child_processes():  # interrupts reach this process alone, which stops the pool
                manager = running.enter_context(ctx.Manager())
                pool = running.enter_context(ctx.Pool(min(workers, len(todo)), initializer=exit_on_sigterm))
            q = manager.Queue()
            results = pool.imap_unordered(
                _worker, [(t, spec.to_dict(), str(staging), q) for t in costliest_first(todo)]
            )
            for _ in todo:
                while True:
                    try:
                        summary = results.next(timeout=0.05)  # re-raises a worker's exception
                        break
                    except mp.TimeoutError:
                        _drain(q, progress, timeout=0.15)
                _drain(q, progress, timeout=0)
                summaries[summary["task"]] = summary
                yield from ready()
            # A normal end lets the workers exit on their own: terminating them would signal workers already in
            # their exit's cleanup (OpenGL's atexit), which prints the SystemExit as "Exception ignored".
            pool.close()
            pool.join()
    finally:
        for bar in bars.values():
            bar.close()


def costliest_first(tasks: list[str]) -> list[str]:
    """The order workers take tasks in (see ``_EXPERT_STEPS``); tasks of equal cost keep their order."""
    return sorted(tasks, key=lambda t: -_EXPERT_STEPS[t.removesuffix("-v3")])


def _drain(q, progress: Callable[[str, int, int], None], timeout: float) -> None:
    """Show the progress events queued by the workers (waiting up to ``timeout`` for the first)."""
    try:
        event = q.get(timeout=timeout) if timeout else q.get_nowait()
        while True:
            progress(*event)
            event = q.get_nowait()
    except queue.Empty:
        pass
