"""Starting simulator worker processes: spawned (each imports the torch/LeRobot stack) vs forked from the fork server.

Usage: python benchmarks/bench_worker_start.py [--workers 2] [--pools 3] [--json out.json]

Per start method, in a fresh process of its own (so the fork server starts cold): ``--pools`` simulator pools of
``--workers`` MetaWorld workers one after another (as `wm eval` runs in a `wm matrix`, a test session or a notebook
that evaluates several times), each timed from `EnvPool()` until every worker has answered a command. The first
pool with the fork server pays its one start (it imports the stack once); later pools fork it. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import stamp, today, write_figures

REPO = Path(__file__).resolve().parents[1]
METHODS = ("spawn", "fork server")


def pool_starts(method: str, workers: int, pools: int) -> list[float]:
    """Seconds each pool took to start, in this process."""
    import multiprocessing as mp

    import world_modality.rollout.envs as envs

    if method == "spawn":
        envs.worker_context = lambda: mp.get_context("spawn")
    seconds = []
    for _ in range(pools):
        start = time.perf_counter()
        with envs.EnvPool("metaworld", None, workers) as pool:
            pool.env_builds()  # every worker has started and answered
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # one method, in this process
    args = parser.parse_args()
    if args.method:
        print(json.dumps(pool_starts(args.method, args.workers, args.pools)))
        return

    starts = {}
    for method in METHODS:
        command = [sys.executable, __file__, "--method", method, "--workers", str(args.workers)]
        out = subprocess.run([*command, "--pools", str(args.pools)], capture_output=True, text=True, check=True)
        starts[method] = json.loads(out.stdout.splitlines()[-1])
    print(f"{args.workers} MetaWorld workers per pool, {args.pools} pools one after another (seconds to start):")
    for method, seconds in starts.items():
        later = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
        print(
            f"  {method}: first {seconds[0]:.2f}, later (median) {later:.2f}  [{', '.join(f'{s:.2f}' for s in seconds)}]"
        )
    write_figures(
        args.json or REPO / "benchmarks" / "results" / f"worker_start_cpu_{today()}.json",
        {
            "benchmark": "bench_worker_start",
            **stamp("cpu"),
            "settings": {"workers": args.workers, "pools": args.pools},
            "pool_start_s": starts,
        },
    )


if __name__ == "__main__":
    main()
