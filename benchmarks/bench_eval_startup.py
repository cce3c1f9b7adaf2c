"""Start-up of a matrix's evaluations: the first on a fresh simulator pool, the later ones on the same pool.

Usage: python benchmarks/bench_eval_startup.py CHECKPOINT [CHECKPOINT ...] --tasks T1,T2 [--episodes-per-task 2]
       [--workers 2] [--groups 1] [--max-steps 20] [--repeat 2] [--json out.json]

Evaluates the checkpoints one after another (each ``--repeat`` times, as a matrix evaluates arms, ablations and
seeds on one episode list) through `evaluate_checkpoint` with one `EnvPools`. Per evaluation: the start-up
(from the call until the first action is sent to the simulators: policy load, pool start or reuse, the first
batch's env builds and resets), the whole evaluation's time, and the envs the workers had built by its end.
The first evaluation pays the processes' start and the env builds; the later ones should pay neither.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from world_modality.rollout import evaluate_checkpoint
from world_modality.rollout.envs import EnvPool
from world_modality.rollout.pools import EnvPools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--episodes-per-task", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2, help="evaluations of each checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    first_step: list[float] = []
    real_send = EnvPool.send

    def timed_send(self, command, payloads):
        if command == "step" and not first_step:
            first_step.append(time.perf_counter())
        return real_send(self, command, payloads)

    EnvPool.send = timed_send
    rows = []
    with EnvPools() as pools, tempfile.TemporaryDirectory() as out:
        for n, checkpoint in enumerate(c for c in args.checkpoints for _ in range(args.repeat)):
            first_step.clear()
            start = time.perf_counter()
            evaluate_checkpoint(
                checkpoint,
                tasks=args.tasks,
                episodes_per_task=args.episodes_per_task,
                workers=args.workers,
                groups=args.groups,
                max_steps=args.max_steps,
                device=args.device,
                arm=f"run{n}",
                train_seed=0,
                out_dir=Path(out) / str(n),
                pools=pools,
            )
            end = time.perf_counter()
            rows.append(
                {
                    "evaluation": n + 1,
                    "checkpoint": checkpoint,
                    "startup_s": round(first_step[0] - start, 2),
                    "total_s": round(end - start, 2),
                    "pools_started": pools.started,
                    "envs_built": sum(p.env_builds() for p in pools.pools),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    later = [r["startup_s"] for r in rows[1:]]
    if later:
        print(
            f"start-up: first {rows[0]['startup_s']:.2f} s, later {min(later):.2f}-{max(later):.2f} s "
            f"({rows[0]['startup_s'] / max(later):.0f}x or more)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "evaluations": rows}, indent=2))


if __name__ == "__main__":
    main()
