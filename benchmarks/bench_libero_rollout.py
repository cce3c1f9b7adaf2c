"""LIBERO closed-loop rollout throughput vs the raw simulator (same rendering, same machine), as a ratio.

Usage (GPU machine, EGL), all stages in one command:
    MUJOCO_GL=egl python benchmarks/bench_libero_rollout.py --work W [--assets PATH] --workers 32 --groups 2
or in stages, so a long evaluation fits several commands (or machines) through `wm eval --shard`:
    ... --work W --stage policy
    ... --work W --stage runner --shard 1/2    (then --shard 2/2, on this or another machine of the kind)
    ... --work W --stage raw --raw-processes 16 --raw-episodes 160
    ... --work W --stage summary
CPU smoke test:
    python benchmarks/bench_libero_rollout.py --smoke

Stages (offline once LIBERO is set up; ``--assets`` runs `wm libero setup --assets PATH` first):
1. policy: a LIBERO-schema dataset (random policy, one episode per task of ``--tasks``,
   `generate_libero_dataset`) at the benchmark's image size,
   `learned` world latents, model F (`world_transformer`) trained for a few steps -> W/run;
2. runner: `evaluate_checkpoint` on the suite (both cameras rendered, batched policy, ``--workers``
   simulator processes in ``--groups`` pipelined lockstep groups), every episode running to ``--max-steps``
   (the policy is untrained), timed from the call (policy load and process start included);
3. raw: ``--raw-processes`` processes each stepping its share of the same episode list (same tasks, init
   states, settle steps, cameras and size) with random actions and no policy;
4. summary: runner episodes/hour over all its shards (their walls added: one machine running them one
   after another) vs the raw simulator's, the ratio (target >= 0.8), the projected time for 2,000 episodes,
   and the merged shard results (they must cover the whole episode list).
Each stage appends its timing to W/timings.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

PROJECTED_EPISODES = 2000


def _raw_worker(args) -> tuple[int, int]:
    """Run episodes [(task, init index)] with random actions; returns (episodes, steps)."""
    suite, episodes, size, max_steps = args
    from world_modality.sim.libero.env import ACTION_DIM, LiberoEnv, LiberoRenderSettings

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


def _record(work: Path, **fields) -> None:
    with open(work / "timings.jsonl", "a") as f:
        f.write(json.dumps(fields) + "\n")
    print(json.dumps(fields))


def stage_policy(args, work: Path) -> None:
    from world_modality.latents import compute_latents
    from world_modality.sim.libero.data import generate_libero_dataset
    from world_modality.training.trainer import TrainOptions, train

    steps = 4 if args.smoke else 50
    dataset = generate_libero_dataset(
        work / "dataset", args.suite, _tasks(args), 1, steps=4 if args.smoke else 20, image_size=args.image_size
    )
    latents = compute_latents(dataset, "learned", learned_steps=steps, device=args.device, progress=False)
    train(
        TrainOptions(
            dataset=str(dataset),
            latents=str(latents),
            out=str(work / "run"),
            model_type="F",
            steps=steps,
            batch_size=16,
            save_every=steps,
            device=args.device,
            progress=False,
        )
    )


def stage_runner(args, work: Path) -> None:
    from world_modality.atomic_io import read_jsonl
    from world_modality.rollout import evaluate_checkpoint

    start = time.perf_counter()
    results = evaluate_checkpoint(
        work / "run",
        env="libero",
        suite=args.suite,
        tasks=_tasks(args),
        episodes_per_task=args.episodes_per_task,
        arm="bench",
        train_seed=0,
        out_dir=work / "eval",
        workers=args.workers,
        groups=args.groups,
        device=args.device,
        max_steps=args.max_steps,
        shard=args.shard,
    )
    wall = time.perf_counter() - start
    records = read_jsonl(results)
    _record(
        work,
        stage="runner",
        shard=args.shard,
        workers=args.workers,
        groups=args.groups,
        episodes=len(records),
        steps=sum(r["steps"] for r in records),
        wall_s=round(wall, 2),
        cpus=os.cpu_count(),
    )


def stage_raw(args, work: Path) -> None:
    from world_modality.sim.libero.episodes import libero_episodes

    episodes = [(ep.task, ep.layout) for ep in libero_episodes(args.suite, _tasks(args), args.episodes_per_task)]
    # An even spread of the tasks when only some of the list runs (every process builds each of its tasks' envs).
    episodes = (
        episodes[:: max(1, len(episodes) // args.raw_episodes)][: args.raw_episodes] if args.raw_episodes else episodes
    )
    processes = args.raw_processes or args.workers
    shares = [episodes[i::processes] for i in range(processes)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        done = pool.map(
            _raw_worker, [(args.suite, share, args.image_size, args.max_steps) for share in shares], chunksize=1
        )
    wall = time.perf_counter() - start
    _record(
        work,
        stage="raw",
        processes=processes,
        episodes=sum(d[0] for d in done),
        steps=sum(d[1] for d in done),
        wall_s=round(wall, 2),
        cpus=os.cpu_count(),
    )


def stage_summary(args, work: Path) -> None:
    from world_modality.shards import load_episode_results

    timings = [json.loads(line) for line in (work / "timings.jsonl").read_text().splitlines()]
    runner = [t for t in timings if t["stage"] == "runner"]
    raw = [t for t in timings if t["stage"] == "raw"]
    if not runner or not raw:
        raise SystemExit(
            f"{work}/timings.jsonl needs runner and raw stages; it has {sorted({t['stage'] for t in timings})}"
        )
    merged = load_episode_results(work / "eval")  # refuses missing or unfinished shards
    runner_eps, runner_wall = sum(t["episodes"] for t in runner), sum(t["wall_s"] for t in runner)
    runner_rate = runner_eps / runner_wall * 3600
    print(
        f"{args.suite}: {len(merged)} episodes in {len(runner)} runner call(s) x {args.max_steps} steps, 2 cameras "
        f"{args.image_size}px; merged results cover {len(merged)} episodes"
    )
    for t in runner:
        print(
            f"  runner shard {t['shard']}: {t['episodes']} episodes, {t['workers']} processes in {t['groups']} groups, "
            f"{t['wall_s']:.1f} s, {t['episodes'] / t['wall_s'] * 3600:,.1f} episodes/h, {t['steps'] / t['wall_s']:.1f} env steps/s"
        )
    for t in raw:
        print(
            f"  raw: {t['episodes']} episodes, {t['processes']} processes, {t['wall_s']:.1f} s, "
            f"{t['episodes'] / t['wall_s'] * 3600:,.1f} episodes/h, {t['steps'] / t['wall_s']:.1f} env steps/s"
        )
    best_raw = max(raw, key=lambda t: t["episodes"] / t["wall_s"])
    raw_rate = best_raw["episodes"] / best_raw["wall_s"] * 3600
    print(
        f"runner {runner_rate:,.1f} episodes/h vs raw {raw_rate:,.1f} (best: {best_raw['processes']} processes): "
        f"ratio {runner_rate / raw_rate:.2f}"
    )
    print(
        f"projected {PROJECTED_EPISODES} episodes on one machine: runner {PROJECTED_EPISODES / runner_rate * 60:.1f} min, "
        f"raw simulator {PROJECTED_EPISODES / raw_rate * 60:.1f} min"
    )


def _tasks(args) -> list[str]:
    return [t.strip() for t in args.tasks.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--work", default=None, help="folder for the stages' outputs (default: a temporary folder, --stage all)"
    )
    parser.add_argument("--stage", default="all", choices=["all", "policy", "runner", "raw", "summary"])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", default="0,1", help="task ids of the suite (the small policy is trained on them)")
    parser.add_argument("--episodes-per-task", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="runner: simulator processes")
    parser.add_argument("--groups", type=int, default=1, help="runner: pipelined lockstep groups of the workers")
    parser.add_argument("--shard", default=None, help="runner: run shard i/N of the episode list")
    parser.add_argument("--raw-processes", type=int, default=None, help="raw: processes (default: --workers)")
    parser.add_argument(
        "--raw-episodes", type=int, default=None, help="raw: run this many of the episodes (default: all)"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=280,
        help="steps per episode (every episode runs to it: the policy is untrained)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--assets", default=None, help="run `wm libero setup --assets PATH` first (e.g. on a machine without PyPI)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny CPU configuration: 64 px, 1 task, 2 episodes, 4 steps, 2 workers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.episodes_per_task, args.image_size, args.max_steps, args.device = "0", 2, 64, 4, "cpu"
        args.workers, args.groups = 2, 2

    from lerobot_policy_world_modality.rendering import ensure_headless_rendering
    from world_modality.sim.libero.setup import setup

    print(f"MUJOCO_GL={ensure_headless_rendering()}")
    if args.assets:
        setup(args.assets)
    if args.work is None:
        if args.stage != "all":
            raise SystemExit("--stage other than all needs --work (the folder the stages share)")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _run_stages(args, Path(tmp))
    else:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        _run_stages(args, Path(args.work))


def _run_stages(args, work: Path) -> None:
    stages = {"policy": stage_policy, "runner": stage_runner, "raw": stage_raw, "summary": stage_summary}
    for name in stages if args.stage == "all" else [args.stage]:
        stages[name](args, work)


if __name__ == "__main__":
    main()
