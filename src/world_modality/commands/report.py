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
            "(and the training runs and `wm intervene` results, for the read-check and curves): report.md states, for "
            "every world-memory arm, whether it read its memory (gate, rollout ablations, offline interventions) and "
            "whether it helped, hurt or made no significant difference against its baseline (an arm without world "
            "memory; an unread memory is 'inconclusive'), with a table of arms x world source x training memory x "
            "read-check x success, per-task, overall and "
            "MetaWorld task-group success (Wilson 95% intervals), paired differences (bootstrap interval, exact "
            "McNemar p), the rollout-ablation table, aggregation over training seeds, training-loss and gate "
            "plots, and links to rollout videos; the same tables go to CSV files beside it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `wm matrix` run folder")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="ARM",
        help="the arm without world memory every other arm is compared with (default: the matrix "
        "file's report.baseline, else per arm the one arm without world memory on its world source)",
    )
    parser.add_argument(
        "--export",
        default=None,
        metavar="DEST",
        help="copy RUN_DIR's results (episodes, interventions, checkpoint configs, thinned loss and "
        "gate curves; no dataset, latents or weights) into DEST, merged with the pieces DEST "
        "already holds (other seeds or arms of the same dataset and episode list), and write "
        "DEST's report instead",
    )
    add_common(parser)
    parser.set_defaults(handler=_report)


def _report(args) -> int:
    if not args.export:  # a reader: the report of a finished folder takes no lock
        _write(args.run_dir, args)
        return 0
    from world_modality.locks import writer_lock
    from world_modality.matrix.export import export_results

    with writer_lock(args.export):  # one writer of DEST: its export and its report
        print(export_results(args.run_dir, args.export).summary(args.export))
        _write(args.export, args)
    return 0


def _write(run_dir: str, args) -> None:
    from world_modality.matrix import report_baseline
    from world_modality.report import write_report

    baseline = args.baseline or report_baseline(run_dir)
    print(f"report written to {write_report(run_dir, alpha=args.alpha, baseline=baseline)}")
