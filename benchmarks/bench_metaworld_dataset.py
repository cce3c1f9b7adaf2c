"""`wm data metaworld` end to end: does writing keep pace with generation, and is it as fast at the end as
at the start?

Usage: python benchmarks/bench_metaworld_dataset.py --tasks MT50 --episodes 20 --workers 16 [--image-size 128]
       [--baseline] [--json FILE] [--keep DIR]

Runs ``generate_metaworld_dataset`` into a fresh folder and times every episode as it reaches its shard
(the generator's DEBUG records). Reported: start-up (to the first episode), the time and frames of the
first and of the last 10% of episodes (each from the episode before the window to its last one), the
tail after the last episode (appending the remaining shards, finalizing) and the total, in wall time and
in CPU time of all processes (robust on a shared machine). ``--baseline`` then re-records exactly the
dataset's episodes with the scripted experts alone (no writing, same number of processes), so what
writing adds is visible. ``--json`` also keeps every episode's time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from world_modality.data.merge import DatasetAppender
from world_modality.sim.metaworld import generate as metaworld_gen
from world_modality.sim.metaworld.env import MetaWorldEnv, RenderSettings


class _EpisodeTimes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.written: list[tuple[float, str]] = []  # (time.time(), task) per episode written

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith(" written"):
            self.written.append((record.created, record.args[0]))


def _timed_appends(spans: list[tuple[float, float]]) -> None:
    """Record (start, end) of every shard appended to the dataset (in this process)."""
    append = DatasetAppender.append

    def timed(self, shard):
        start = time.time()
        episodes = append(self, shard)
        spans.append((start, time.time()))
        return episodes

    DatasetAppender.append = timed


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers)."""
    return sum(
        (usage.ru_utime + usage.ru_stime)
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def _window(times: list[float], frames: list[int], start: int, stop: int) -> dict:
    """Episodes start+1 .. stop (0-based positions), timed from episode ``start``."""
    return {
        "episodes": stop - start,
        "seconds": times[stop] - times[start],
        "frames": sum(frames[start + 1 : stop + 1]),
    }


def _record(args: tuple[str, list[tuple[int, int]], dict]) -> int:
    task, layouts, render = args
    frames, env = 0, None
    for seed, layout in layouts:
        if env is None or env.seed != seed:
            if env is not None:
                env.close()
            env = MetaWorldEnv(task, seed, RenderSettings.from_dict(render))
        episode, _ = metaworld_gen.record_expert_episode(env, task, layout)
        frames += len(episode["action"])
    env.close()
    return frames


def _baseline(sidecar: dict, workers: int) -> dict:
    """The dataset's episodes recorded again by the scripted experts alone, one task per process."""
    jobs = [
        (
            task,
            [(e["seed"], e["layout_index"]) for e in sidecar["episodes"] if e["task"] == task],
            sidecar["spec"]["render"],
        )
        for task in sidecar["spec"]["tasks"]
    ]
    start, cpu = time.perf_counter(), _cpu_seconds()
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        frames = sum(pool.map(_record, jobs, chunksize=1))
        pool.close()
        pool.join()  # children count in RUSAGE_CHILDREN once waited for
    cpu = _cpu_seconds() - cpu
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": cpu,
        "cpu_ms_per_frame": 1000 * cpu / frames,
        "frames": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="reach-v3,drawer-close-v3,button-press-v3,window-close-v3")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--storage", choices=("image", "video"), default="image")
    parser.add_argument("--baseline", action="store_true", help="also time the scripted experts alone")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--keep", default=None, help="write the dataset here (default: a temporary folder)")
    args = parser.parse_args()

    times = _EpisodeTimes()
    logger = logging.getLogger(metaworld_gen.__name__)
    logger.addHandler(times)
    logger.setLevel(logging.DEBUG)
    appends: list[tuple[float, float]] = []
    _timed_appends(appends)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or Path(tmp) / "dataset")
        start, cpu = time.time(), _cpu_seconds()
        metaworld_gen.generate_metaworld_dataset(
            out, args.tasks, args.episodes, image_size=args.image_size, storage=args.storage, workers=args.workers
        )
        end, cpu = time.time(), _cpu_seconds() - cpu
        sidecar = json.loads((out / metaworld_gen.SIDECAR).read_text())
        baseline = _baseline(sidecar, args.workers) if args.baseline else None

    lengths: dict[str, list[int]] = {}  # per task, in the order its episodes were written
    for e in sidecar["episodes"]:
        lengths.setdefault(e["task"], []).append(e["length"])
    stamps, frames = [start], [0]
    for t, task in times.written:
        stamps.append(t)
        frames.append(lengths[task].pop(0))
    n = len(stamps) - 1
    k = math.ceil(0.1 * n)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "tasks": len(sidecar["spec"]["tasks"]),
        "episodes": n,
        "frames": sum(frames),
        "workers": args.workers,
        "image_size": args.image_size,
        "storage": args.storage,
        "startup_s": stamps[1] - start,
        "first_10pct": _window(stamps, frames, 1, 1 + k),
        "last_10pct": _window(stamps, frames, n - k, n),
        "tail_after_last_episode_s": end - stamps[-1],
        "appending_shards_s": {
            "total": sum(b - a for a, b in appends),
            "after_last_episode": sum(b - max(a, stamps[-1]) for a, b in appends if b > stamps[-1]),
        },
        "total_s": end - start,
        "cpu_s": cpu,
        "cpu_ms_per_frame": 1000 * cpu / sum(frames),
    }
    result["last_vs_first_10pct_time"] = result["last_10pct"]["seconds"] / result["first_10pct"]["seconds"]
    if baseline:
        result["experts_alone"] = baseline
        result["writing_adds"] = {
            "wall": result["total_s"] / baseline["seconds"] - 1,
            "cpu": cpu / baseline["cpu_s"] - 1,
        }
    print(json.dumps(result, indent=2))
    if args.json:
        timeline = [[round(t - start, 2), task] for t, task in times.written]
        Path(args.json).write_text(json.dumps({**result, "episode_written_at_s": timeline}, indent=2) + "\n")


if __name__ == "__main__":
    main()
