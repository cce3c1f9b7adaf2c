"""Closed-loop rollout throughput vs the raw simulator, same rendering, same number of processes.

Usage: python benchmarks/bench_rollout_throughput.py CHECKPOINT [--tasks reach-v3] [--episodes 4] [--workers 2]

raw: ``--workers`` processes each step a MetaWorld env with the checkpoint's render settings and
random actions (no policy, no pipes) for the same number of steps the evaluation ran.
runner: ``evaluate_checkpoint`` (simulator workers + batched policy), env steps / wall time.
Both figures are env steps/s over all processes; the ratio runner/raw is the target (>= 0.8).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from world_modality.atomic_io import read_jsonl
from world_modality.rollout import evaluate_checkpoint
from world_modality.rollout.policies import load_rollout_policy
from world_modality.sim.metaworld.env import MetaWorldEnv, RenderSettings


def _raw_worker(args) -> float:
    task, render_dict, steps = args
    env = MetaWorldEnv(task, seed=1000, render=RenderSettings.from_dict(render_dict) if render_dict else None)
    rng = np.random.default_rng(0)
    env.reset(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, done = env.step(rng.uniform(-1, 1, 4))
        if env.render is not None:
            env.frames()
        if done:
            env.reset(0)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", default="reach-v3")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = evaluate_checkpoint(
            args.checkpoint,
            tasks=args.tasks,
            episodes_per_task=args.episodes,
            arm="bench",
            train_seed=0,
            out_dir=Path(tmp),
            workers=args.workers,
            device=args.device,
        )
        wall = time.perf_counter() - start
        records = read_jsonl(results)
    steps = sum(r["steps"] for r in records)
    # Rollout time without process start and policy load: batches of `workers` episodes run one after
    # another, each lasting as long as its longest episode (records keep batch order).
    rollout_time = sum(
        max(r["wall_time_s"] for r in records[i : i + args.workers]) for i in range(0, len(records), args.workers)
    )
    runner_rate = steps / rollout_time
    render = load_rollout_policy(args.checkpoint, device="cpu").render
    per_worker = steps // args.workers
    with mp.get_context("spawn").Pool(args.workers) as pool:
        elapsed = pool.map(
            _raw_worker, [(args.tasks.split(",")[0], render.to_dict() if render else None, per_worker)] * args.workers
        )
    raw_rate = per_worker * args.workers / max(elapsed)
    print(f"episodes {len(records)}, env steps {steps}, workers {args.workers}, render {render}")
    print(
        f"runner: {runner_rate:8.1f} env steps/s  ({len(records) / wall * 3600:.0f} episodes/h including "
        f"{wall - rollout_time:.0f} s of process start and policy load)"
    )
    print(f"raw:    {raw_rate:8.1f} env steps/s")
    print(f"ratio runner/raw: {runner_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
