"""``wm demo``: the main job on the offline default, stage by stage, each stage resumable.

Stages so far: MetaWorld expert dataset. Later stages (latents, training, paired closed-loop
evaluation, report) join here as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from world_modality.commands import add_common


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on a small offline default",
        description=(
            "Run the pipeline end to end with no downloads: generate a MetaWorld expert dataset "
            "(and, as they land, world latents, E0/E2 training, paired evaluation and the report). "
            "Every stage is resumable: rerun the same command after an interruption."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", default="outputs/demo", help="run folder")
    demo.add_argument("--tasks", default="MT10", help="MetaWorld tasks (names, MT10, MT50 or a group)")
    demo.add_argument("--episodes-per-task", type=int, default=5, help="expert episodes per task")
    demo.add_argument("--image-size", type=int, default=128)
    demo.add_argument("--workers", type=int, default=2, help="parallel simulator processes")
    add_common(demo)
    demo.set_defaults(handler=_demo)


def _demo(args) -> int:
    from world_modality.data.check import check_dataset
    from world_modality.data.metaworld_gen import generate_metaworld_dataset

    out = Path(args.out)
    start = time.monotonic()
    dataset = out / "dataset"
    print(f"[1/1] MetaWorld expert dataset -> {dataset}")
    generate_metaworld_dataset(
        dataset, args.tasks, args.episodes_per_task, image_size=args.image_size, workers=args.workers
    )
    print(check_dataset(dataset).format())
    print(f"demo finished in {time.monotonic() - start:.0f} s; outputs in {out}")
    return 0
