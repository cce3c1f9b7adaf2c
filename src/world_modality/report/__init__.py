"""`wm report`: the Markdown report of a matrix run, built only from its per-episode result files.

Reads ``RUN_DIR/eval/<label>/seed<k>/episodes.jsonl`` (see `world_modality.matrix` for the run folder), or
the shard files ``episodes.shard-<i>-of-<N>.jsonl`` of a sharded evaluation merged into the same records
(`world_modality.shards`; missing, unfinished or mismatched shards are refused), and,
for the read-check and the training curves, the training runs ``RUN_DIR/train/<arm>/seed<k>/`` (last
checkpoint's gate, TensorBoard logs) and the offline interventions ``RUN_DIR/intervene/<arm>/seed<k>.json``
(`wm intervene --json`). Writes into ``RUN_DIR/report/`` (every file atomically):

- ``report.md``: a verdict for every world-memory arm against its baseline, whatever the arms are called
  (`world_modality.report.arms`), which says whether the arm read its memory (`world_modality.report.readcheck`),
  warnings, the tables below, the plots and links to rollout videos;
- ``arms.csv``: each arm's kind, world source (encoder), training memory, baseline, read-check and success;
- ``overall.csv``, ``per_task.csv``, ``task_groups.csv`` (where the simulator defines task groups): success with Wilson intervals;
- ``comparisons.csv``: paired differences (controls and world-memory arms vs their baseline, world memory vs
  a control on the same world source, each ablation vs its arm) with a paired bootstrap interval and the exact
  McNemar p-value, pooled over training seeds;
- ``ablations.csv``: each world-memory arm under every rollout memory mode;
- ``seeds.csv`` (several training seeds): per-seed rates, their mean and std, and the pooled interval;
- ``success.png`` (one bar per evaluation, coloured by rollout memory mode), ``training_curves.png`` (one colour per
  arm) and ``world_gate.png`` (|tanh(gate)| of the world-memory arms, log scale, with the read-check's thresholds).

The parts: `results` loads the run folder (episode records, each arm's facts, training curves, read-check evidence),
`tables` computes the statistics tables, `plots` draws the PNGs, `markdown` writes report.md from a `ReportContent`;
`arms` says what an arm is and which baseline it is judged against, `readcheck` whether it read its memory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from world_modality.atomic_io import atomic_write_text
from world_modality.report.arms import ArmKind, resolve_baselines
from world_modality.report.markdown import ReportContent, markdown, report_summary, verdict_lines
from world_modality.report.plots import curve_figure, gate_figure, save_png, success_figure
from world_modality.report.results import LOSS_TAGS, arm_facts, load_results, read_check, training_scalars
from world_modality.report.tables import (
    ablation_rows,
    arm_rows,
    compare_pairs,
    comparison_pairs,
    comparison_row,
    device_warnings,
    episode_set_warnings,
    seed_rows,
    success_rows,
    task_groups,
    zero_success_warnings,
)

REPORT_DIR = "report"

__all__ = ["REPORT_DIR", "load_results", "report_summary", "write_report"]


def write_report(run_dir: str | Path, alpha: float = 0.05, baseline: str | None = None) -> Path:
    """Write ``RUN_DIR/report/`` (see the module docstring); returns the path of report.md.

    ``baseline`` names the arm every other arm is compared with (default: per arm, the one arm without world
    memory on its world source; `world_modality.report.arms.resolve_baselines`)."""
    run_dir = Path(run_dir).expanduser().resolve()
    out = run_dir / REPORT_DIR
    res = load_results(run_dir)
    facts = arm_facts(run_dir, res)
    baselines = resolve_baselines(list(facts.values()), baseline)
    curves = training_scalars(run_dir)
    checks = {arm: read_check(run_dir, res, arm, curves) for arm, f in facts.items() if f.kind is ArmKind.WORLD}
    warnings = episode_set_warnings(res) + zero_success_warnings(res)

    overall = success_rows(res, ("arm",))
    groups = task_groups(res)
    pairs = comparison_pairs(res, facts, baselines)
    comparisons = compare_pairs(res, pairs)
    warnings += device_warnings(res, pairs)
    warnings += [f"{a} and {b} could not be compared: {c}" for (a, b), c in comparisons.items() if isinstance(c, str)]
    tables = {
        "arms": arm_rows(res, overall, facts, baselines, checks),
        "overall": overall,
        "per_task": success_rows(res, ("arm", "task")),
        "task_groups": groups.rows,
        "comparisons": [comparison_row(a, b, c) for (a, b), c in comparisons.items()],
        "ablations": ablation_rows(res, overall, comparisons),
        "seeds": seed_rows(res),
    }
    for name, rows in tables.items():
        if rows:
            atomic_write_text(out / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
    plots = {
        "success": save_png(success_figure(overall, res.mode), out / "success.png"),
        "training_curves": save_png(curve_figure(curves, LOSS_TAGS), out / "training_curves.png"),
        "world_gate": save_png(gate_figure(curves), out / "world_gate.png"),
    }
    verdicts = verdict_lines(res, facts, baselines, checks, comparisons, alpha)
    content = ReportContent(run_dir, out, res, alpha, verdicts, warnings, checks, tables, groups, plots)
    atomic_write_text(out / "report.md", markdown(content))
    return out / "report.md"
