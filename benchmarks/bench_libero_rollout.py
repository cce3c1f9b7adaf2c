"""LIBERO closed-loop rollout throughput vs the raw simulator (same rendering, same processes), as a ratio.

Usage (GPU machine, EGL):
    MUJOCO_GL=egl python benchmarks/bench_libero_rollout.py [--assets PATH] [--workers 8] [--episodes-per-task 4]
CPU smoke test:
    python benchmarks/bench_libero_rollout.py --smoke

What it does, all offline once LIBERO is set up (``--assets`` runs `wm libero setup --assets PATH` first):
1. a small policy: a LIBERO-schema dataset (random policy, `generate_libero_dataset`) at the benchmark's
   image size, `learned` world latents, model F (`world_transformer`) trained for a few steps;
2. runner: `evaluate_checkpoint` on libero_spatial (both cameras rendered, batched policy, simulator
   worker processes), every episode running to ``--max-steps``;
3. raw: the same number of processes, each stepping its share of the same episodes (same tasks, init
   states, settle steps, cameras and size) with random actions and no policy.
Both are timed from the first env build to the last episode's end; episodes/hour and env steps/s are
printed for each, with the ratio runner/raw (target >= 0.8).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np


def _raw_worker(args) -> tuple[int, int]:
    """Run episodes [(task, init index)] with random actions; returns (episodes, steps)."""
    suite, episodes, size, max_steps = args
    from world_modality.sim.libero_env import (
        ACTION_DIM,
        LiberoEnv,
        LiberoRenderSettings,
    )

    rng = np.random.default_rng(0)
    render = LiberoRenderSettings(width=size, height=size)
    env, steps = None, 0
    for task, init_index in episodes:
        if env is None or env.task != task:
            if env is not None:
                env.close()
            env = LiberoEnv(suite, task, render)
        raw = env.reset(init_index)
        env.frames(raw)
        for _ in range(max_steps):
            raw, _, done = env.step(rng.uniform(-1, 1, ACTION_DIM))
            env.frames(raw)
            steps += 1
            if done:
                break
    if env is not None:
        env.close()
    return len(episodes), steps


def small_policy(work: Path, suite: str, size: int, demo_steps: int, train_steps: int, device: str) -> Path:
    from world_modality.latents import compute_latents
    from world_modality.sim.libero_data import generate_libero_dataset
    from world_modality.training.trainer import TrainOptions, train

    dataset = generate_libero_dataset(work / "dataset", suite, ["0", "1"], 2, steps=demo_steps, image_size=size)
    latents = compute_latents(dataset, "learned", learned_steps=train_steps, device=device, progress=False)
    return train(TrainOptions(dataset=str(dataset), latents=str(latents), out=str(work / "run"), model_type="F",
                              steps=train_steps, batch_size=16, save_every=train_steps, device=device, progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", default="0,1", help="task ids of the suite (the small policy is trained on 0 and 1)")
    parser.add_argument("--episodes-per-task", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="simulator processes (runner and raw)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=280, help="steps per episode (every episode runs to it: the policy is untrained)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--assets", default=None, help="run `wm libero setup --assets PATH` first (e.g. on a machine without PyPI)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU configuration: 64 px, 1 task, 1 episode, 4 steps, 1 worker")
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.episodes_per_task, args.workers, args.image_size, args.max_steps, args.device = "0", 1, 1, 64, 4, "cpu"

    from world_modality.atomic_io import read_jsonl
    from world_modality.rendering import ensure_headless_rendering
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.rollout.episodes import libero_episodes
    from world_modality.sim.libero_setup import setup

    backend = ensure_headless_rendering()
    if args.assets:
        setup(args.assets)
    tasks = [t.strip() for t in args.tasks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = small_policy(work, args.suite, args.image_size, demo_steps=4 if args.smoke else 20,
                                  train_steps=4 if args.smoke else 50, device=args.device)
        start = time.perf_counter()
        results = evaluate_checkpoint(checkpoint, env="libero", suite=args.suite, tasks=tasks, episodes_per_task=args.episodes_per_task,
                                      arm="bench", train_seed=0, out_dir=work / "eval", workers=args.workers,
                                      device=args.device, max_steps=args.max_steps)
        runner_wall = time.perf_counter() - start
        records = read_jsonl(results)
    runner_steps = sum(r["steps"] for r in records)

    episodes = [(ep.task, ep.layout) for ep in libero_episodes(args.suite, tasks, args.episodes_per_task)]
    shares = [episodes[i :: args.workers] for i in range(args.workers)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        done = pool.map(_raw_worker, [(args.suite, share, args.image_size, args.max_steps) for share in shares])
    raw_wall = time.perf_counter() - start
    raw_episodes, raw_steps = sum(d[0] for d in done), sum(d[1] for d in done)

    runner_rate, raw_rate = len(records) / runner_wall * 3600, raw_episodes / raw_wall * 3600
    print(f"{args.suite} tasks {args.tasks}: {len(records)} episodes x {args.max_steps} steps, 2 cameras {args.image_size}px, "
          f"{args.workers} processes, MUJOCO_GL={backend}, policy device {args.device}")
    print(f"runner: {runner_rate:9.1f} episodes/h  {runner_steps / runner_wall:8.1f} env steps/s  ({runner_wall:.1f} s incl. policy load)")
    print(f"raw:    {raw_rate:9.1f} episodes/h  {raw_steps / raw_wall:8.1f} env steps/s  ({raw_wall:.1f} s)")
    print(f"ratio runner/raw: {runner_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
