"""``wm data``: generate MetaWorld expert datasets and check LeRobot datasets."""

from __future__ import annotations

import argparse

from world_modality.choices import COUNT, NON_NEGATIVE
from world_modality.commands import add_common, add_no_verify
from world_modality.data.check import DatasetKeys


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="generate and check datasets", description="Datasets (LeRobot v3).")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    gen = sub.add_parser(
        "metaworld",
        help="generate expert demonstrations with MetaWorld's scripted policies",
        description=(
            "Roll out MetaWorld's scripted experts and write the successful episodes as a LeRobot v3 dataset. "
            "Layouts are iterated deterministically (50 per MT1 seed, starting at --seed); the seeds and "
            "layouts used are recorded in meta/world_modality.json so evaluation can use disjoint ones. "
            "Interrupted runs resume: rerun the same command."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument(
        "--tasks",
        default="MT10",
        help="task names (comma-separated, '-v3' optional), MT10, MT50, or a group: easy, medium, hard, very_hard",
    )
    gen.add_argument("--episodes-per-task", type=COUNT, default=5, help="successful episodes kept per task")
    gen.add_argument(
        "--cameras",
        default="corner2",
        help="comma-separated cameras: corner, corner2, corner3, topview, behindGripper, gripperPOV",
    )
    gen.add_argument("--image-size", type=int, default=128, help="square image size in pixels")
    gen.add_argument(
        "--seed", type=NON_NEGATIVE, default=0, help="first MT1 seed; layouts of seed, seed+1, ... are used in order"
    )
    gen.add_argument(
        "--render-quality",
        choices=("fast", "default"),
        default="fast",
        help="fast: MSAA, shadows and reflections off (~10x faster on CPU); default: MuJoCo's defaults",
    )
    gen.add_argument(
        "--storage",
        choices=("image", "video"),
        default="image",
        help="image: lossless PNG frames; video: AV1 mp4 (smaller, lossy)",
    )
    gen.add_argument("--workers", type=COUNT, default=1, help="parallel worker processes (one task each)")
    gen.add_argument("--out", default="outputs/datasets/metaworld", help="output dataset folder")
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset or staged run with a different spec "
        "(only a dataset this tool wrote: never a folder of other files)",
    )
    add_common(gen)
    gen.set_defaults(handler=_metaworld)

    check = sub.add_parser(
        "check",
        help="validate a LeRobot dataset against what the pipeline needs",
        description=(
            "Check keys, dimensions and instructions of a LeRobot v3 dataset, then read every file of it (every parquet "
            "decoded, every image and video frame decoded) and check the files against the sizes and sha256 recorded "
            "when it was generated (datasets written by `wm data metaworld` / `wm libero dataset`); print a summary. "
            "A damaged file is named."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument(
        "dataset", metavar="PATH_OR_REPO_ID", help="dataset folder, or a repo id already in the local LeRobot cache"
    )
    check.add_argument("--image-key", default=None, help="camera key (default: the first camera feature)")
    check.add_argument("--wrist-key", default=None, help="wrist camera key, when the policy uses one")
    check.add_argument("--state-key", default=DatasetKeys.state)
    check.add_argument("--state-dim", type=int, default=None, help="required state dimension")
    check.add_argument("--action-key", default=DatasetKeys.action)
    check.add_argument("--action-dim", type=int, default=None, help="required action dimension")
    check.add_argument(
        "--instruction-key",
        default=DatasetKeys.instruction,
        help="LeRobot datasets (LIBERO too) keep the instruction under 'task'",
    )
    check.add_argument(
        "--single-instruction",
        action="store_true",
        help="every episode really has the one instruction under --instruction-key: accept the dataset although another "
        "text column varies between episodes (refused otherwise: the instructions are likely there)",
    )
    add_common(check)
    add_no_verify(check)
    check.set_defaults(handler=_check)


def _metaworld(args) -> int:
    from world_modality.sim.metaworld.generate import generate_metaworld_dataset

    generate_metaworld_dataset(
        out=args.out,
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        image_size=args.image_size,
        seed=args.seed,
        render_quality=args.render_quality,
        storage=args.storage,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    return 0


def _check(args) -> int:
    from lerobot_policy_world_modality.dataset_files import resolve_dataset_root
    from world_modality.data.integrity import read_every_file, verify_dataset
    from world_modality.sim import check_dataset

    recorded = verify_dataset(resolve_dataset_root(args.dataset)[0])  # before anything reads its files

    summary = check_dataset(
        args.dataset,
        DatasetKeys(
            image=args.image_key,
            wrist=args.wrist_key,
            state=args.state_key,
            action=args.action_key,
            instruction=args.instruction_key,
            single_instruction=args.single_instruction,
            state_dim=args.state_dim,
            action_dim=args.action_dim,
        ),
    )
    print(summary.format())
    files = read_every_file(summary.root)
    print(
        f"files     {files} read and decoded"
        + (
            ", sizes and sha256 as recorded when written"
            if recorded
            else " (it holds no recorded digests: written elsewhere or by an earlier version)"
        )
    )
    print("OK: the dataset has what the pipeline needs")
    return 0
