"""Compare the `train/loss` curves of two `wm train` runs (e.g. 1 GPU vs 2 GPUs through accelerate).

Usage: python benchmarks/compare_loss_curves.py RUN_A RUN_B [--json out.json]
Reads each run's TensorBoard events and prints the loss at a few steps, the largest absolute and relative
difference over all common steps, and the final-window means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def loss_curve(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {s.step: s.value for s in events.Scalars("train/loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    a, b = loss_curve(args.run_a), loss_curve(args.run_b)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise SystemExit(f"no common logged steps in {args.run_a} and {args.run_b}")
    abs_diff = [abs(a[s] - b[s]) for s in steps]
    rel_diff = [d / max(abs(a[s]), 1e-12) for d, s in zip(abs_diff, steps, strict=True)]
    tail = steps[-max(1, len(steps) // 10) :]
    result = {
        "steps": len(steps),
        "max_abs_diff": max(abs_diff),
        "max_rel_diff": max(rel_diff),
        "final_window_mean": [sum(a[s] for s in tail) / len(tail), sum(b[s] for s in tail) / len(tail)],
        "samples": {s: [a[s], b[s]] for s in steps[:: max(1, len(steps) // 8)]},
    }
    for step, (la, lb) in result["samples"].items():
        print(f"step {step:5d}  {la:.6f}  {lb:.6f}")
    print(
        f"{len(steps)} common steps; max |diff| {result['max_abs_diff']:.3g}, max relative {result['max_rel_diff']:.3g}; "
        f"final-window means {result['final_window_mean'][0]:.5f} vs {result['final_window_mean'][1]:.5f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
