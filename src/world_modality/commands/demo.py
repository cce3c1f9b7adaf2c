"""``wm demo``: the main job on the offline default, as an experiment matrix built in code.

MetaWorld expert dataset -> `learned` and `state` world latents -> E0 (model A) and E2 (model F) on `learned`,
E0-state and the oracle-trained bound E2-oracle-state (model F trained on the true future states, acting on its
own predictions) on `state` -> offline interventions
and paired closed-loop evaluation of every arm and each world-memory arm with zero memory and with another
episode's memory (`other`) -> report, whose
verdicts and read-check (did each world-memory arm read its memory?) the demo prints. Every stage is resumable
(it is `wm matrix` underneath), and options scale it up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from world_modality.choices import COUNT
from world_modality.commands import add_common, add_no_verify

# E0 and E2 read `learned` latents (the offline default world source). Beside them, an arm whose memory is read
# at this scale, so the demo's report says something about world memory being read: the oracle-trained bound on
# the `state` world source (true future simulator states in training, its own Prophet's predictions at rollout)
# with a 10x gate learning rate, and its baseline E0-state (model A reads its world source as input). At the
# demo's size the oracle-trained arm on `learned` latents kept its gate shut (|tanh| 2.4e-05); this one opened
# it (0.082) and its offline action loss rose x1.6 without its memory (2026-12-02, 2-core CPU).
BASELINE_ARMS = {"E0": {"model_type": "A"}, "E0-state": {"model_type": "A", "encoder": "state"}}
WORLD_ARMS = {
    "E2": {"model_type": "F"},
    "E2-oracle-state": {"model_type": "F", "memory_source": "oracle", "encoder": "state", "gate_lr_multiplier": 10.0},
}

# Small enough for a 2-core CPU in about 20 minutes, large enough that policies succeed on some tasks.
DEMO_TASKS = "reach-v3,button-press-topdown-v3,drawer-close-v3,window-close-v3"


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a small offline default (dataset, latents, E0/E2 and the oracle bound, eval, report)",
        description=(
            "Run the pipeline end to end with no downloads: generate MetaWorld expert demos, compute `learned` "
            "and `state` world latents, train the baseline E0 (model A) and the world-memory E2 (model F) on `learned`, "
            "and E0-state and the oracle-trained bound E2-oracle-state (model F trained on the true future states) "
            "on `state`, evaluate every arm and each "
            "world-memory arm with zero memory and with another episode's memory on the same episodes, and write "
            "RUN_DIR/report/report.md; its "
            "verdicts and read-check are printed at the end. "
            "Interrupted runs resume: rerun the same command. Scale up with the options (e.g. --tasks MT50 "
            "--episodes-per-task 50 --train-steps 20000 --seeds 3 --device cuda)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", default="outputs/demo", help="run folder")
    demo.add_argument("--tasks", default=DEMO_TASKS, help="MetaWorld tasks (names, MT10, MT50 or a group)")
    demo.add_argument("--episodes-per-task", type=COUNT, default=20, help="expert demos per task")
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--encoder-steps", type=COUNT, default=300, help="training steps of the learned encoder")
    demo.add_argument("--train-steps", type=COUNT, default=1200, help="training steps per policy")
    demo.add_argument("--batch-size", type=COUNT, default=64)
    demo.add_argument("--seeds", type=COUNT, default=1, help="training seeds per arm")
    demo.add_argument("--eval-episodes", type=COUNT, default=6, help="evaluation episodes per task and arm")
    demo.add_argument("--workers", type=COUNT, default=2, help="simulator processes")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (training and encoding)")
    demo.add_argument("--dry-run", action="store_true", help="print what is done and what would run")
    add_common(demo)
    add_no_verify(demo)
    demo.set_defaults(handler=_demo)


def demo_config(args) -> dict:
    return {
        "dataset": {
            "metaworld": {
                "tasks": args.tasks,
                "episodes_per_task": args.episodes_per_task,
                "image_size": args.image_size,
                "workers": args.workers,
            }
        },
        "encoders": [
            {"name": "learned", "learned_steps": args.encoder_steps, "device": args.device},
            {"name": "state"},
        ],
        "training": {
            "seeds": list(range(args.seeds)),
            "steps": args.train_steps,
            "batch_size": args.batch_size,
            "device": args.device,
        },
        "arms": {**BASELINE_ARMS, **WORLD_ARMS},
        "ablations": {arm: ["zero", "other"] for arm in WORLD_ARMS},
        "interventions": {arm: ["zero", "shuffle"] for arm in WORLD_ARMS},
        "evaluation": {
            "env": "metaworld",
            "episodes_per_task": args.eval_episodes,
            "workers": args.workers,
            "videos_per_task": 1,
        },
    }


def _demo(args) -> int:
    from world_modality.matrix import parse_config, run_matrix
    from world_modality.report import report_summary

    out = Path(args.out)
    start = time.monotonic()
    run_matrix(parse_config(demo_config(args)), out, dry_run=args.dry_run)
    if not args.dry_run:
        report = out / "report" / "report.md"
        print(f"\n{report_summary(report.read_text())}\n")
        print(f"demo finished in {(time.monotonic() - start) / 60:.1f} min; report: {report}")
    return 0
