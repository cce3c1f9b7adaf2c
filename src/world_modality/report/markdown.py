"""report.md: the verdicts, warnings, tables, plots and rollout videos of a report (`ReportContent`) in Markdown, and
the summary `wm demo` prints."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from world_modality.report.arms import ArmFacts, ArmKind
from world_modality.report.readcheck import GATE_OPEN, GATE_SHUT, ReadCheck, ReadState, world_memory_verdict
from world_modality.report.results import Results
from world_modality.report.tables import TaskGroups
from world_modality.stats import ArmComparison, comparison_numbers, significant, verdict


@dataclass(frozen=True)
class ReportContent:
    """What report.md says, computed from the run folder's files before it is written (`world_modality.report`)."""

    run_dir: Path
    out: Path  # the report's folder: video links are relative to it
    results: Results
    alpha: float
    verdicts: list[str]
    warnings: list[str]
    checks: dict[str, ReadCheck]  # the read-check of each world-memory arm
    tables: dict[str, list[dict[str, Any]]]  # name -> rows, as its CSV file holds them
    task_groups: TaskGroups
    plots: dict[str, Path | None]  # name -> its PNG file (None: nothing to plot)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(low: float, high: float) -> str:
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def _cell(r: dict[str, Any]) -> str:
    return f"{_pct(r['rate'])} {_ci(r['ci_low'], r['ci_high'])} ({r['successes']}/{r['n']})"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pivot(rows: list[dict[str, Any]], key: str, labels: list[str]) -> str:
    """A markdown table with one row per ``key`` value and one column per arm."""
    cells: dict[Any, dict[str, str]] = {}
    for r in rows:
        cells.setdefault(r[key], {})[r["arm"]] = _cell(r)
    return _md_table([key, *labels], [[k, *(v.get(label, "-") for label in labels)] for k, v in cells.items()])


def _describe(f: ArmFacts) -> str:
    """``E2 (learned latents, trained on predicted memory)``, with what is known of the arm."""
    parts = [
        f"{f.world_source} latents" if f.world_source else "",
        f"trained on {f.training_memory} memory" if f.training_memory else "",
    ]
    parts = [p for p in parts if p]
    return f"{f.name} ({', '.join(parts)})" if parts else f.name


def verdict_lines(
    res: Results,
    facts: dict[str, ArmFacts],
    baselines: dict[str, str | None],
    checks: dict[str, ReadCheck],
    comparisons: dict[tuple[str, str], ArmComparison | str],
    alpha: float,
) -> list[str]:
    """The verdict lines: one per world-memory arm against its baseline, then the other comparisons."""
    world = [arm for arm, f in facts.items() if f.kind is ArmKind.WORLD]
    if not world:
        return [
            f"**No verdict on world memory: no arm of this run reads world memory (arms: "
            f"{', '.join(f'{a} ({f.kind})' for a, f in facts.items())}).**"
        ]
    lines = []
    for arm in world:
        base = baselines[arm]
        c = comparisons.get((base, arm)) if base else None
        if base is None:
            lines.append(
                f"**No verdict on world memory for {arm}: this run has no baseline arm (an arm without "
                f"world memory); arms: {', '.join(facts)}.**"
            )
        elif isinstance(c, str):
            lines.append(f"**No verdict on world memory: {arm} and {base} could not be compared ({c}).**")
        else:
            lines.append(
                f"**Did world memory help? {_describe(facts[arm])}:** "
                f"{world_memory_verdict(c, checks[arm], alpha)}"
                f"{_capacity_note(arm, c, facts, comparisons, alpha)}"
            )
    lines.append("")
    for (a, b), c in comparisons.items():
        if not isinstance(c, ArmComparison) or (facts.get(b) and facts[b].kind is ArmKind.WORLD and baselines[b] == a):
            continue
        if b in facts and facts[b].kind is ArmKind.CONTROL:
            lines.append(f"- Capacity control ({b} vs {a}): {verdict(c, alpha)}")
        elif b in facts:  # a world-memory arm vs a control
            lines.append(
                f"- World memory vs the capacity control ({b} vs {a}): "
                f"{world_memory_verdict(c, checks[b], alpha, evidence=False)}"
            )
        elif checks.get(a) and checks[a].state is ReadState.NOT_READ:
            change = next(x for x in checks[a].ablations if x.label == b)
            lines.append(f"- Rollout ablation ({b} vs {a}): {change.text(a)}, part of the read-check.")
        else:
            lines.append(f"- Rollout ablation ({b} vs {a}): {verdict(c, alpha)}")
    return lines


def _capacity_note(
    arm: str,
    against_baseline: ArmComparison,
    facts: dict[str, ArmFacts],
    comparisons: dict[tuple[str, str], ArmComparison | str],
    alpha: float,
) -> str:
    """When a world-memory arm beat its baseline: how it fared against the capacity control (the same world module
    with its memory zeroed), since a gain over a baseline without the module may be the module's capacity alone."""
    if not (significant(against_baseline, alpha) and against_baseline.diff > 0):
        return ""
    notes = []
    for (control, b), c in comparisons.items():
        if b != arm or not isinstance(c, ArmComparison) or facts[control].kind is not ArmKind.CONTROL:
            continue
        if significant(c, alpha) and c.diff > 0:
            notes.append(f" It also beat the capacity control {control}: {comparison_numbers(c, alpha)}.")
        else:
            notes.append(
                f" Against the capacity control {control} (the same world module, its memory zeroed): "
                f"{verdict(c, alpha)} The gain over {against_baseline.arm_a} may be the module's capacity, "
                "not its memory."
            )
    return "".join(notes)


def markdown(report: ReportContent) -> str:
    """report.md's text."""
    res, alpha, tables, checks, plots = report.results, report.alpha, report.tables, report.checks, report.plots
    run_dir, warnings, verdicts, groups = report.run_dir, report.warnings, report.verdicts, report.task_groups
    n_seeds = len({r["train_seed"] for r in res.records})
    lines = [
        f"# World-memory report: {run_dir.name}",
        "",
        f"{len(res.records)} closed-loop episodes, {len(res.labels)} arm(s), {n_seeds} training seed(s); "
        "built from the run folder's per-episode files (`eval/`) only.",
        "",
        "## Verdict",
        "",
        *verdicts,
        "",
    ]
    if warnings:
        lines += ["## Warnings", "", *(f"- **Warning:** {w}" for w in warnings), ""]
    lines += [
        "## Arms, world sources and read-check",
        "",
        "Success with the arm's own memory (Wilson 95% interval, pooled over training seeds). Read-check: "
        "did the arm read its world memory (gate, rollout ablations, offline interventions; "
        "`world_modality.report.readcheck`)?",
        "",
        _md_table(
            [
                "arm",
                "kind",
                "family (backbone)",
                "world source",
                "training memory",
                "baseline",
                "read-check",
                "success",
                "95% CI",
                "successes / episodes",
            ],
            [
                [
                    r["arm"],
                    r["kind"],
                    r["family"] or "-",
                    r["world_source"] or "-",
                    r["training_memory"] or "-",
                    r["baseline"] or "-",
                    r["read_check"] or "-",
                    _pct(r["rate"]),
                    _ci(r["ci_low"], r["ci_high"]),
                    f"{r['successes']}/{r['n']}",
                ]
                for r in tables["arms"]
            ],
        ),
        "",
    ]
    lines += [f"- {arm}: **{check.summary()}**. Evidence: {check.evidence()}." for arm, check in checks.items()]
    lines += [""] if checks else []
    overall = tables["overall"]
    lines += [
        "## Overall success",
        "",
        "Wilson 95% intervals; pooled over training seeds.",
        "",
        _md_table(
            ["arm", "memory mode", "success", "95% CI", "successes / episodes"],
            [
                [
                    r["arm"],
                    res.mode[r["arm"]] or "-",
                    _pct(r["rate"]),
                    _ci(r["ci_low"], r["ci_high"]),
                    f"{r['successes']}/{r['n']}",
                ]
                for r in overall
            ],
        ),
        "",
    ]
    if plots["success"]:
        lines += ["![success per arm](success.png)", ""]
    lines += [
        "## Paired comparisons",
        "",
        "Difference = arm minus versus, on the same (episode, training seed) pairs of the training seeds both "
        f"arms hold; 95% paired bootstrap interval; two-sided exact McNemar test (alpha = {alpha:g}).",
        "",
        _md_table(
            [
                "arm",
                "versus",
                "training seeds",
                "pairs",
                "arm success",
                "versus success",
                "difference (points)",
                "95% CI",
                "only arm / only versus succeeded",
                "McNemar p",
            ],
            [_comparison_md(r) for r in tables["comparisons"]],
        )
        if tables["comparisons"]
        else "No pairs to compare (needs an arm without world memory with another arm, or an ablation with its arm).",
        "",
    ]
    if tables["ablations"]:
        lines += [
            "## Rollout memory ablations",
            "",
            "Each world-memory checkpoint evaluated with its memory replaced at rollout; the difference is "
            "against the arm's own rollout mode on the same episodes.",
            "",
            _md_table(
                ["arm", "memory mode", "success", "95% CI", "difference (points)", "95% CI", "McNemar p"],
                [
                    [
                        r["base_arm"],
                        r["memory_mode"] or "own",
                        _pct(r["rate"]),
                        _ci(r["ci_low"], r["ci_high"]),
                        *(
                            (
                                f"{100 * r['diff_vs_own']:+.1f}",
                                _ci(r["diff_ci_low"], r["diff_ci_high"]),
                                f"{r['mcnemar_p']:.3g}",
                            )
                            if "diff_vs_own" in r
                            else ("(own mode)", "", "")
                        ),
                    ]
                    for r in tables["ablations"]
                ],
            ),
            "",
        ]
    if tables["seeds"]:
        lines += [
            "## Training seeds",
            "",
            "Success rate per training seed, mean and sample std over seeds, and the "
            "pooled rate with its Wilson interval.",
            "",
            _md_table(
                ["arm", "seeds", "per seed", "mean", "std", "pooled", "95% CI"],
                [
                    [
                        r["arm"],
                        r["seeds"],
                        r["per_seed"],
                        _pct(r["mean_rate"]),
                        "-" if r["seeds"] < 2 else _pct(r["std_rate"]),
                        _pct(r["pooled_rate"]),
                        _ci(r["pooled_ci_low"], r["pooled_ci_high"]),
                    ]
                    for r in tables["seeds"]
                ],
            ),
            "",
        ]
    lines += ["## Success per task", "", _pivot(tables["per_task"], "task", res.labels), ""]
    lines += [
        f"## {groups.simulator} task groups" if groups.simulator else "## Task groups",
        "",
        _pivot(groups.rows, "group", res.labels) if groups.rows else groups.note,
        "",
    ]
    lines += [
        "## Training",
        "",
        "Training loss is not evidence that world memory helps: only the closed-loop results above are.",
        "",
    ]
    if plots["training_curves"]:
        lines += ["![training curves](training_curves.png)", ""]
    else:
        lines += [f"No training logs found under `{run_dir / 'train'}`.", ""]
    if plots["world_gate"]:
        lines += [
            "World-memory gate |tanh(gate)| over training (0 = memory ignored; the read-check calls a gate "
            f"open from {GATE_OPEN:g} and shut below {GATE_SHUT:g}):",
            "",
            "![world gate](world_gate.png)",
            "",
        ]
    if res.videos:
        lines += ["## Rollout videos", ""]
        for label in res.labels:
            links = [
                f"[{caption}]({quote(os.path.relpath(path, report.out))})"
                for lab, caption, path in res.videos
                if lab == label
            ]
            if links:
                lines += [f"- {label}: " + ", ".join(links)]
        lines.append("")
    lines += ["Tables as CSV: " + ", ".join(f"[{n}.csv]({n}.csv)" for n, rows in tables.items() if rows) + "."]
    return "\n".join(lines) + "\n"


SUMMARY_SECTIONS = ("## Verdict", "## Arms, world sources and read-check")


def report_summary(markdown: str) -> str:
    """The verdict and read-check sections of a report.md (what `wm demo` prints at its end)."""
    sections = re.split(r"(?m)^(?=## )", markdown)
    return "\n".join(s.strip() + "\n" for s in sections if s.startswith(SUMMARY_SECTIONS))


def _comparison_md(r: dict[str, Any]) -> list[str]:
    if r["error"]:
        return [r["arm"], r["versus"], "-", "-", "-", "-", "not compared", r["error"], "-", "-"]
    return [
        r["arm"],
        r["versus"],
        r["train_seeds"].replace(" ", ", "),
        str(r["n_pairs"]),
        _pct(r["rate"]),
        _pct(r["rate_versus"]),
        f"{100 * r['diff']:+.1f}",
        _ci(r["diff_ci_low"], r["diff_ci_high"]),
        f"{r['only_arm_succeeded']} / {r['only_versus_succeeded']}",
        f"{r['mcnemar_p']:.3g}",
    ]
