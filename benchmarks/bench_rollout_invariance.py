"""Batch-invariant rollouts: does an episode's action digest depend on what shares its inference batch, and what does
the fixed inference shape cost in rollouts/s?

Usage (one GPU machine, the whole comparison in one call):

    python benchmarks/bench_rollout_invariance.py --out DIR [--old-src OLD] [--tasks MT10] [--episodes 6]
        [--workers 16] [--groups 2] [--max-steps 150] [--device cuda]

It makes a small MetaWorld expert dataset, its `learned` latents and a model-F checkpoint in DIR (reused when there),
then evaluates that checkpoint on one episode list in several layouts of the workers: ``--workers`` in ``--groups``
lockstep groups (the production layout, timed on started simulator processes), half the workers in one group, and an
odd count that leaves a partial last batch. Each layout's per-episode action digests are compared with the first's.

Variants, each in a process of its own on the same machine:
- ``fixed``: this checkout (the policy called on a fixed number of rows per device type, `INFERENCE_ROWS`);
- ``one-row``: this checkout with one row per call on every device (the per-row alternative, for its cost);
- ``old``: the sources in ``--old-src`` (e.g. ``git archive a0c4b74 src packages | tar -x -C OLD``: the policy called
  on each group's batch as it comes), for the throughput before and its digests.

Prints one table and writes DIR/rollout_invariance.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare(out: Path, tasks: str, device: str) -> Path:
    """The dataset, `learned` latents and a model-F checkpoint (trained briefly: the runner is measured, not skill)."""
    from world_modality.latents import compute_latents
    from world_modality.sim.metaworld.generate import generate_metaworld_dataset
    from world_modality.training.trainer import TrainOptions, train

    dataset = out / "dataset"
    if not (dataset / "meta" / "info.json").exists():
        generate_metaworld_dataset(dataset, tasks, 5, image_size=64, seed=0, workers=os.cpu_count() or 1)
    latents = compute_latents(dataset, "learned", device=device, learned_steps=300, progress=False)
    run = out / "train"
    if not (run / "checkpoints" / "last").exists():
        train(
            TrainOptions(
                dataset=str(dataset),
                latents=str(latents),
                out=str(run),
                model_type="F",
                steps=300,
                batch_size=256,
                save_every=300,
                device=device,
                progress=False,
            )
        )
    return run


def evaluate_layouts(checkpoint: Path, out: Path, args: argparse.Namespace) -> dict:
    """Evaluate ``checkpoint`` in every layout of the workers (this process's sources); the production layout twice on
    started simulator processes, the second run timed. Returns digests per layout and the timing."""
    from world_modality.atomic_io import read_jsonl
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.rollout.pools import EnvPools

    common = dict(
        tasks=args.tasks,
        episodes_per_task=args.episodes,
        max_steps=args.max_steps,
        device=args.device,
        arm="bench",
        train_seed=0,
    )
    layouts = {
        f"{args.workers}w x {args.groups}g": (args.workers, args.groups),
        f"{args.workers // 2}w x 1g": (args.workers // 2, 1),
        f"{max(1, args.workers // 2 - 3)}w x 1g": (max(1, args.workers // 2 - 3), 1),
    }
    digests, timing = {}, {}
    with EnvPools() as pools:
        for index, (name, (workers, groups)) in enumerate(layouts.items()):
            runs = 2 if index == 0 else 1
            for run in range(runs):
                folder = out / f"{name.replace(' ', '')}-{run}"
                start = time.perf_counter()
                results = evaluate_checkpoint(
                    checkpoint, out_dir=folder, workers=workers, groups=groups, pools=pools, **common
                )
                elapsed = time.perf_counter() - start
            records = read_jsonl(results)
            digests[name] = {r["episode_id"]: r["action_digest"] for r in records}
            if index == 0:
                steps = sum(r["steps"] for r in records)
                timing = {
                    "layout": name,
                    "episodes": len(records),
                    "env_steps": steps,
                    "seconds": elapsed,
                    "episodes_per_s": len(records) / elapsed,
                    "env_steps_per_s": steps / elapsed,
                    "successes": sum(r["success"] for r in records),
                }
    return {"digests": digests, "timing": timing}


def variant_main(args: argparse.Namespace) -> None:
    """Inside a variant's process: evaluate and write the variant's JSON."""
    if args.variant == "one-row":
        from world_modality.rollout import policies

        policies.INFERENCE_ROWS.update(dict.fromkeys(policies.INFERENCE_ROWS, 1))
    out = Path(args.out)
    evaluations = out / f"eval-{args.variant}"
    shutil.rmtree(evaluations, ignore_errors=True)  # an earlier run's episodes would be resumed, not timed
    result = evaluate_layouts(out / "train", evaluations, args)
    (out / f"variant-{args.variant}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--old-src", help="a copy of an earlier commit's src/ and packages/ (the 'old' variant)")
    parser.add_argument("--tasks", default="MT10")
    parser.add_argument("--episodes", type=int, default=6, help="evaluation episodes per task")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="fixed,one-row,old", help="which of fixed, one-row, old to run")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return variant_main(args)

    out = Path(args.out)
    prepare(out, args.tasks, args.device)
    wanted = args.variants.split(",")
    if "fixed" not in wanted:
        parser.error("--variants must include fixed, the reference")
    variants = {name: None for name in ("fixed", "one-row") if name in wanted}
    if "old" in wanted:
        if not args.old_src:
            parser.error("the old variant needs --old-src")
        old = Path(args.old_src).resolve()
        variants["old"] = f"{old / 'src'}:{old / 'packages' / 'lerobot_policy_world_modality' / 'src'}"
    forwarded = [a for a in sys.argv[1:] if a != "--old-src" and a != args.old_src]
    for name, path in variants.items():
        env = dict(os.environ) | ({"PYTHONPATH": path} if path else {})
        subprocess.run([sys.executable, __file__, *forwarded, "--variant", name], env=env, check=True)

    results = {name: json.loads((out / f"variant-{name}.json").read_text()) for name in variants}
    reference = results["fixed"]["digests"]
    first = next(iter(reference))
    import torch

    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "options": {k: v for k, v in vars(args).items() if k != "variant"},
        "variants": {},
    }
    print(
        f"{'variant':10s} {'layout timed':16s} {'episodes/s':>10s} {'env steps/s':>11s}  digests equal to its own "
        f"{first} / to fixed's"
    )
    for name, result in results.items():
        own = result["digests"][first]
        same_as_own = {layout: d == own for layout, d in result["digests"].items()}
        same_as_fixed = {layout: d == reference[layout] for layout, d in result["digests"].items()}
        timing = result["timing"]
        report["variants"][name] = {
            "timing": timing,
            "equal_to_own_first_layout": same_as_own,
            "equal_to_fixed": same_as_fixed,
        }
        print(
            f"{name:10s} {timing['layout']:16s} {timing['episodes_per_s']:10.2f} {timing['env_steps_per_s']:11.0f}  "
            f"{same_as_own} / {same_as_fixed}"
        )
    (out / "rollout_invariance.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
