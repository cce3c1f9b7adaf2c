"""``wm report``: the Markdown report (and CSV tables, PNG plots) of a matrix run folder."""

from __future__ import annotations

import argparse

from world_modality.commands import add_common


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report/report.md from the run's per-episode results",
        description=(
            "Build RUN_DIR/report/ from the per-episode result files RUN_DIR/eval/<label>/seed<k>/episodes.jsonl "
            "(and the training TensorBoard logs, for curves): report.md states whether world memory (E2) helped, "
            "hurt or made no significant difference against the baseline (E0), with per-task, overall and "
            "MetaWorld task-group success (Wilson 95%% intervals), paired differences (bootstrap interval, exact "
            "McNemar p), the rollout-ablation table, aggregation over training seeds, training-loss and gate "
            "plots, and links to rollout videos; the same tables go to CSV files beside it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `wm matrix` run folder")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    add_common(parser)
    parser.set_defaults(handler=_report)


def _report(args) -> int:
    from world_modality.report import write_report

    print(f"report written to {write_report(args.run_dir, alpha=args.alpha)}")
    return 0
