"""``wm eval``: closed-loop evaluation of a checkpoint on paired episodes."""

from __future__ import annotations

import argparse
from pathlib import Path

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES
from world_modality.choices import COUNT, EVAL, NON_NEGATIVE
from world_modality.commands import add_common, add_no_verify
from world_modality.sim import DEFAULT_SIMULATOR, SIMULATOR_NAMES, evaluation_suites


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="closed-loop evaluation of a checkpoint in simulation",
        description=(
            "Roll a checkpoint out in simulation and append one JSON line per episode to OUT/episodes.jsonl. "
            "MetaWorld episodes are (task, seed, layout) triples: layouts 0..49 of --eval-seed, then of --eval-seed + 1, ... "
            "skipping the layouts the training dataset used. LIBERO episodes (--env libero --suite S) are "
            "(suite, task, init-state index) with init states 0..N-1 of each task (run `wm libero setup` once first). "
            "Every arm evaluated with the same options runs the same episodes. The cameras, image size and render "
            "settings come from the checkpoint. Rerun to resume. --shard i/N splits the evaluation across processes, "
            "GPUs or machines: each shard writes OUT/episodes.shard-<i>-of-<N>.jsonl; copy all shard files into one "
            "folder and `wm eval` (any shard, rerun) or `wm report` merges them into the one-process result. An ablation "
            "(--memory-mode other than the checkpoint's own) ends by saying whether it changed any paired episode of "
            "the arm's own results (in OUT, or in a matrix run folder's eval/<arm>/seed<k>)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a wm train run folder, checkpoint folder or pretrained_model folder"
    )
    p.add_argument(
        "--env",
        default=DEFAULT_SIMULATOR,
        choices=SIMULATOR_NAMES,
        help="simulator (the checkpoint's data must come from it)",
    )
    p.add_argument(
        "--suite",
        default=None,
        choices=evaluation_suites(),
        help="LIBERO suite (--env libero); its episodes are init states 0..N-1 of each task, in LIBERO's order",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="tasks (default: the checkpoint's training tasks); LIBERO: task names or ids in the suite",
    )
    p.add_argument(
        "--max-steps",
        type=COUNT,
        default=EVAL.max_steps,
        help="end episodes after this many steps (default: the simulator's limit; LIBERO: 280/280/300/520/400 by suite)",
    )
    p.add_argument("--episodes-per-task", type=COUNT, default=EVAL.episodes_per_task)
    p.add_argument(
        "--memory-mode",
        default=None,
        choices=ROLLOUT_MODES,
        help="world-memory ablation at rollout (default: the checkpoint's world_memory_mode_rollout)",
    )
    p.add_argument(
        "--memory-bank",
        default=None,
        metavar="LATENTS",
        help="--memory-mode other (another episode's memory, the across-episode content control): the "
        "`wm latents` cache whose latent histories the Prophet predicts from (default: the held-out "
        "episodes of the checkpoint's training latents)",
    )
    p.add_argument("--arm", default="policy", help="arm name recorded with each episode (e.g. E0, E2)")
    p.add_argument("--train-seed", type=int, default=0, help="training seed recorded with each episode")
    p.add_argument("--out", required=True, help="output folder (episodes.jsonl, videos/)")
    p.add_argument("--workers", type=COUNT, default=EVAL.workers, help="simulator processes (= episodes run at once)")
    p.add_argument(
        "--groups",
        type=COUNT,
        default=EVAL.groups,
        help="pipelined lockstep groups of the workers, each with its own policy state: the policy acts for "
        "one group while the others' simulators step (GPU machines: e.g. --workers 32 --groups 2 on 16 cores)",
    )
    p.add_argument(
        "--eval-seed", type=NON_NEGATIVE, default=EVAL.eval_seed, help="first MT1 seed of the evaluation layouts"
    )
    p.add_argument(
        "--videos-per-task",
        type=NON_NEGATIVE,
        default=EVAL.videos_per_task,
        help="mp4 videos of the first N episodes per task",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--allow-train-layouts", action="store_true", help="also evaluate on layouts seen in training")
    p.add_argument(
        "--eager",
        action="store_true",
        help="act through the policy's eager path, without the CUDA graphs its fast inference replays on a GPU "
        "(to compare the outcomes of both paths on the same episodes; use another --out)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="i/N",
        help="run only shard i of N (1-based: 1/N ... N/N): the episodes at positions i-1, i-1+N, ... of the "
        "full episode list; all other options must be the same for every shard",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the evaluation as --shards Ray tasks on the cluster at ADDRESS ('auto': the one started on "
        "this machine with `ray start --head`); OUT must be on storage every node sees. With --device "
        "cuda each task also holds a share of a GPU for the policy",
    )
    p.add_argument(
        "--shards",
        type=COUNT,
        default=None,
        help="with --ray: Ray tasks to split the evaluation into (default 1), each holding --workers CPUs",
    )
    add_common(p)
    add_no_verify(p)
    p.set_defaults(handler=_eval)


def _shard(text: str):
    from world_modality.shards import Shard

    try:
        return Shard.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _eval(args) -> int:
    from pathlib import Path

    from world_modality.atomic_io import read_jsonl
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.shards import IncompleteShards, Shard, load_episode_results
    from world_modality.stats import success_table

    if args.shards is not None and args.ray is None:
        raise InputError(
            "--shards splits the evaluation into Ray tasks: give --ray ADDRESS too (on one machine, use "
            "--shard i/N per process instead)"
        )
    if args.ray is not None and args.shard is not None:
        raise InputError("--ray runs every shard itself (--shards N); leave out --shard")
    options = dict(
        env=args.env,
        suite=args.suite,
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        memory_mode=args.memory_mode,
        memory_bank=None if args.memory_bank is None else str(Path(args.memory_bank).resolve()),
        arm=args.arm,
        train_seed=args.train_seed,
        out_dir=args.out,
        workers=args.workers,
        eval_seed=args.eval_seed,
        videos_per_task=args.videos_per_task,
        device=args.device,
        allow_train_layouts=args.allow_train_layouts,
        eager=args.eager,
        max_steps=args.max_steps,
        groups=args.groups,
    )
    if args.ray is not None:
        from contextlib import ExitStack

        from world_modality.atomic_io import output_folder
        from world_modality.locks import writer_lock
        from world_modality.rollout.runner import EVALUATION_KIND
        from world_modality.schedule import Plan, Step, eval_resources, execute

        count = args.shards or 1
        resources = eval_resources(args.workers, gpu=args.device.startswith("cuda"))
        # Absolute paths: a task's working folder is Ray's, on whichever node runs it.
        where = {"checkpoint": str(Path(args.checkpoint).resolve()), "out_dir": str(Path(args.out).resolve())}
        out = output_folder(args.out, EVALUATION_KIND)
        with ExitStack() as held:  # every shard's results file, for the tasks that write them
            for i in range(1, count + 1):
                held.enter_context(writer_lock(out / Shard(i, count).file_name, folder=False))
            execute(
                Plan(
                    [
                        Step(
                            f"eval shard {i}/{count}",
                            "eval",
                            evaluate_checkpoint,
                            options | where | {"shard": f"{i}/{count}"},
                            resources=resources,
                        )
                        for i in range(1, count + 1)
                    ]
                ),
                "ray",
                address=args.ray,
            )
        results = Path(args.out) / Shard(count, count).file_name
    else:
        results = evaluate_checkpoint(args.checkpoint, **options, shard=args.shard)
    if args.shard is None and args.ray is None:
        merged = read_jsonl(results)
    else:
        count = args.shard.count if args.shard is not None else args.shards or 1
        try:
            merged = load_episode_results(results.parent)
            print(f"summary of all {count} shards, merged:")
        except IncompleteShards as e:  # the other shards are still running: summarise this one
            print(f"not merged yet: {e}\nsummary of shard {args.shard} only:")
            merged = read_jsonl(results)
    records = [
        r
        for r in merged
        if r["base_arm"] == args.arm
        and r["train_seed"] == args.train_seed
        and (r["memory_mode"] == args.memory_mode if args.memory_mode else r["arm"] == args.arm)
    ]
    label = records[0]["arm"] if records else args.arm
    for row in success_table(records, by=("task",)) + success_table(records, by=("arm",)):
        name = row.get("task", f"overall ({label})")
        print(
            f"{name:32s} {row['successes']:4d}/{row['n']:<4d} {row['rate']:6.1%}  95% CI [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"
        )
    stopped = [r for r in records if r.get("stopped")]
    if stopped:
        print(
            f"{len(stopped)} of {len(records)} episodes stopped early, counted as failures: "
            + "; ".join(f"{r['episode_id']} ({r['stopped']})" for r in stopped[:5])
            + ("; ..." if len(stopped) > 5 else "")
        )
    if label != args.arm:  # an ablation: did it change anything against the arm's own memory?
        print(_against_own(merged, Path(args.out), label, args.arm, args.train_seed, records))
    print(f"results: {results}")
    return 0


def _against_own(merged: list[dict], out: Path, label: str, arm: str, train_seed: int, records: list[dict]) -> str:
    """Compare an ablation with the arm's own results: in the same --out folder, or in a matrix run folder's
    ``eval/<arm>/seed<k>`` beside ``eval/<arm>:<mode>/seed<k>``."""
    from world_modality.report.readcheck import ablation_change, ablation_line
    from world_modality.shards import has_results, load_episode_results

    own = [r for r in merged if r["arm"] == arm and r["train_seed"] == train_seed]
    sibling = out.parent.parent / arm / out.name
    if not own and out.parent.name == label and has_results(sibling):
        own = [r for r in load_episode_results(sibling) if r["train_seed"] == train_seed]
    if not own:
        return (
            f"{label}: no results of {arm}'s own memory mode (training seed {train_seed}) in {out} or {sibling} "
            "to compare with"
        )
    return ablation_line(ablation_change(own, records, label), arm)
