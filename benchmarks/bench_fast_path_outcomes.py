"""Closed-loop outcomes of a checkpoint acting through its fast inference path vs its eager path, on the same episodes.

Usage: python benchmarks/bench_fast_path_outcomes.py CHECKPOINT --out DIR [--tasks T] [--episodes-per-task 20]
       [--workers 32] [--groups 2] [--max-steps N] [--device cuda] [--json FILE]

Evaluates CHECKPOINT twice with `wm eval`'s runner: as `wm eval` does by default (a VLA family replays CUDA graphs on
a GPU) into DIR/fast, and with `--eager` into DIR/eager (both resumable), then pairs the episodes by id. bf16
arithmetic in another kernel order may flip an episode at the edge of success: the report counts the episodes
whose success, length or actions (their digest) differ, with the successes and the wall time of each path. On a CPU both paths are eager
(a check that the script runs). Writes the figures, with device, date and commit, as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from provenance import commit, device_name, today

from world_modality.atomic_io import atomic_write_json, read_jsonl
from world_modality.devices import resolve_device
from world_modality.rollout import evaluate_checkpoint

PATHS = {"fast": False, "eager": True}  # path name -> `eager`


def compare(fast: list[dict], eager: list[dict]) -> dict:
    """Paired per-episode comparison of two evaluations of one checkpoint."""
    by_id = {row["episode_id"]: row for row in eager}
    if sorted(by_id) != sorted(row["episode_id"] for row in fast):
        raise SystemExit("the two evaluations hold different episodes: use fresh --out folders")
    pairs = [(row, by_id[row["episode_id"]]) for row in fast]
    return {
        "episodes": len(pairs),
        "successes": {
            "fast": sum(bool(f["success"]) for f, _ in pairs),
            "eager": sum(bool(e["success"]) for _, e in pairs),
        },
        "success_differs": sorted(f["episode_id"] for f, e in pairs if bool(f["success"]) != bool(e["success"])),
        "length_differs": sorted(f["episode_id"] for f, e in pairs if f["steps"] != e["steps"]),
        "actions_differ": sorted(f["episode_id"] for f, e in pairs if f["action_digest"] != e["action_digest"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="DIR/fast and DIR/eager hold the two evaluations")
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--episodes-per-task", type=int, default=20)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too (atomically)")
    args = parser.parse_args()
    wall, rows = {}, {}
    for path, eager in PATHS.items():
        start = time.perf_counter()
        results = evaluate_checkpoint(
            args.checkpoint,
            tasks=args.tasks,
            episodes_per_task=args.episodes_per_task,
            arm=path,
            train_seed=0,
            out_dir=args.out / path,
            workers=args.workers,
            groups=args.groups,
            max_steps=args.max_steps,
            device=args.device,
            eager=eager,
        )
        wall[path] = time.perf_counter() - start
        rows[path] = read_jsonl(results)
    figures = compare(rows["fast"], rows["eager"])
    figures |= {
        "device": device_name(resolve_device(args.device).type),
        "date": today(),
        "commit": commit(),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "wall_s": wall,
    }
    print(json.dumps(figures, indent=2))
    print(
        f"fast {figures['successes']['fast']}/{figures['episodes']} vs eager {figures['successes']['eager']}/"
        f"{figures['episodes']} successes; success differs on {len(figures['success_differs'])} episode(s), "
        f"length on {len(figures['length_differs'])}, actions on {len(figures['actions_differ'])}"
    )
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()
