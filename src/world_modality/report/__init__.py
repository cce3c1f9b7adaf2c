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
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from world_modality.atomic_io import atomic_path, atomic_write_text
from lerobot_policy_world_modality.families import FAMILY_OF_TYPE, policy_family
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES, MemoryMode

from world_modality.report.arms import ArmFacts, ArmKind, arm_kind, resolve_baselines, training_memory
from world_modality.report.readcheck import (
    GATE_OPEN,
    GATE_SHUT,
    GATE_TAG,
    OfflineGap,
    ReadCheck,
    ReadState,
    ablation_change,
    intervention_path,
    load_gate_run,
    read_scalars,
    world_memory_verdict,
)
from world_modality.shards import has_results, load_episode_results
from world_modality.sim import task_groups
from world_modality.stats import (
    ArmComparison,
    aggregate_over_seeds,
    compare_arms,
    comparison_numbers,
    significant,
    success_table,
    task_group_table,
    verdict,
)
from lerobot_policy_world_modality.errors import InputError, MissingFileError

REPORT_DIR = "report"
REQUIRED_FIELDS = ("arm", "episode_id", "success", "task", "train_seed")
# Result files without a recorded memory mode (written before the runner recorded it): E0 was the baseline and
# E1 the capacity control by convention; any other arm is taken as a world-memory arm.
LEGACY_KINDS = {"E0": ArmKind.BASELINE, "E1": ArmKind.CONTROL}
LOSS_TAGS = ("train/loss", "train/action_loss", "val/action_loss")
COMPARISON_COLUMNS = ("train_seeds", "n_pairs", "rate", "rate_versus", "diff", "diff_ci_low", "diff_ci_high",
                      "only_arm_succeeded", "only_versus_succeeded", "mcnemar_p")


@dataclass
class Results:
    """Every episode record of a run, with its evaluation labels in report order."""

    records: list[dict[str, Any]]
    labels: list[str]
    base: dict[str, str]  # label -> base arm
    mode: dict[str, str | None]  # label -> rollout memory mode (None: the checkpoint's own, or no memory)
    videos: list[tuple[str, str, Path]]  # (label, caption, video file)


def load_results(run_dir: str | Path) -> Results:
    """Read the results of every ``eval/*/seed*/`` folder of ``run_dir`` (shards merged); a record lacking a
    field is an error."""
    run_dir = Path(run_dir)
    folders = sorted(p for p in (run_dir / "eval").glob("*/seed*") if p.is_dir() and has_results(p))
    records: list[dict[str, Any]] = []
    base: dict[str, str] = {}
    mode: dict[str, str | None] = {}
    videos: list[tuple[str, str, Path]] = []
    for folder in folders:
        for i, r in enumerate(load_episode_results(folder), 1):
            missing = [k for k in REQUIRED_FIELDS if k not in r]
            if missing:
                raise InputError(f"{folder} episode record {i} lacks field(s) {missing}")
            label = r["arm"]
            if label != folder.parent.name:
                raise InputError(f"{folder} episode record {i} holds a result of arm {label!r}, but its folder is the "
                                 f"evaluation {folder.parent.name!r}: two evaluations would be mixed up")
            base.setdefault(label, r.get("base_arm") or label.split(":")[0])
            mode.setdefault(label, r.get("memory_mode"))
            records.append(r)
            if r.get("video"):
                caption = f"{r['task']} seed {r.get('seed')} layout {r.get('layout')} (train seed {r['train_seed']})"
                videos.append((label, caption, folder / r["video"]))
    if not records:
        raise MissingFileError(f"no episode results under {run_dir / 'eval'} (expected <label>/seed<k>/episodes.jsonl)")

    def order(label: str) -> tuple[list[Any], int]:
        own = label == base[label]
        return _natural(base[label]), -1 if own else _mode_rank(mode[label])

    return Results(records, sorted(base, key=order), base, mode, videos)


def write_report(run_dir: str | Path, alpha: float = 0.05, baseline: str | None = None) -> Path:
    """Write ``RUN_DIR/report/`` (see the module docstring); returns the path of report.md.

    ``baseline`` names the arm every other arm is compared with (default: per arm, the one arm without world
    memory on its world source; `world_modality.report.arms.resolve_baselines`)."""
    run_dir = Path(run_dir).expanduser().resolve()
    out = run_dir / REPORT_DIR
    res = load_results(run_dir)
    facts = arm_facts(run_dir, res)
    baselines = resolve_baselines(list(facts.values()), baseline)
    curves = _training_scalars(run_dir)
    checks = {arm: read_check(run_dir, res, arm, curves) for arm, f in facts.items() if f.kind is ArmKind.WORLD}
    warnings = _episode_set_warnings(res) + _zero_success_warnings(res)

    overall = _ordered(success_table(res.records, by=("arm",)), res.labels)
    per_task = _ordered(success_table(res.records, by=("arm", "task")), res.labels)
    simulator_groups = task_groups(r["suite"] for r in res.records if "suite" in r)
    groups, group_note = [], "No task-group rollup: the episodes' simulator defines no task groups."
    if simulator_groups:
        try:
            groups, group_note = _ordered(task_group_table(res.records, simulator_groups, by=("arm",)), res.labels), ""
        except ValueError as e:  # tasks outside the simulator's groups
            group_note = f"No task-group rollup: {e}."
    comparisons = _comparisons(res, _comparison_pairs(res, facts, baselines))
    comparison_rows = [_comparison_row(a, b, c) for (a, b), c in comparisons.items()]
    warnings += [f"{a} and {b} could not be compared: {c}" for (a, b), c in comparisons.items() if isinstance(c, str)]
    ablations = _ablation_rows(res, overall, comparisons)
    seeds = _seed_rows(res)
    arms = _arm_rows(res, overall, facts, baselines, checks)

    tables = {"arms": arms, "overall": overall, "per_task": per_task, "task_groups": groups,
              "comparisons": comparison_rows, "ablations": ablations, "seeds": seeds}
    for name, rows in tables.items():
        if rows:
            atomic_write_text(out / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
    plots = {"success": _save_png(_success_figure(overall, res.mode), out / "success.png"),
             "training_curves": _save_png(_curve_figure(curves, LOSS_TAGS), out / "training_curves.png"),
             "world_gate": _save_png(_gate_figure(curves), out / "world_gate.png")}

    verdicts = _verdicts(res, facts, baselines, checks, comparisons, alpha)
    md = _markdown(run_dir, res, alpha, warnings, tables, group_note, verdicts, checks, plots, out)
    atomic_write_text(out / "report.md", md)
    return out / "report.md"


# --- arms and read-checks ---------------------------------------------------------------------------------


def _own_records(res: Results, label: str) -> list[dict[str, Any]]:
    return [r for r in res.records if r["arm"] == label]


def _seeds(res: Results, arm: str) -> list[Any]:
    return sorted({r["train_seed"] for r in _own_records(res, arm)}, key=lambda s: _natural(str(s)))


def _checkpoint_config(run_dir: Path, res: Results, arm: str) -> dict[str, Any] | None:
    """The policy config of one of the arm's checkpoints: the run folder's training run, else the checkpoint
    its records name; None when neither is there."""
    from world_modality.training.checkpoint import resolve_pretrained

    candidates = [run_dir / "train" / arm / f"seed{s}" for s in _seeds(res, arm)]
    candidates += [Path(p) for p in dict.fromkeys(r.get("checkpoint") for r in _own_records(res, arm)) if p]
    for candidate in candidates:
        try:
            return json.loads((resolve_pretrained(candidate) / "config.json").read_text())
        except FileNotFoundError:
            continue
    return None


def arm_facts(run_dir: Path, res: Results) -> dict[str, ArmFacts]:
    """Each arm's kind (from the memory mode its own evaluation recorded), world source and training memory
    (from its checkpoint's config, when found)."""
    out = {}
    for arm in [label for label in res.labels if label == res.base[label]]:
        mode = res.mode[arm]
        kind = arm_kind(mode) if mode is not None else LEGACY_KINDS.get(arm, ArmKind.WORLD)
        config = _checkpoint_config(run_dir, res, arm) or {}
        source = (config.get("encoder_spec") or {}).get("name")
        memory = (training_memory(config["memory_source"], config["world_memory_mode_train"])
                  if kind is not ArmKind.BASELINE and "memory_source" in config else None)
        family = policy_family(config["type"], config) if config.get("type") in FAMILY_OF_TYPE else None
        out[arm] = ArmFacts(arm, kind, source, memory, family)
    return out


def read_check(run_dir: Path, res: Results, arm: str, curves: Curves) -> ReadCheck:
    """The read-check of a world-memory arm from the run folder: per training seed its gate and offline
    intervention, and every rollout ablation against its own evaluation."""
    gate, offline = {}, {}
    for seed in _seeds(res, arm):
        train_run = run_dir / "train" / arm / f"seed{seed}"
        trajectory = curves.get(f"{arm} seed {seed}", {}).get(GATE_TAG, ([], []))
        gate[seed] = load_gate_run(train_run, trajectory) if train_run.is_dir() else None
        path = intervention_path(run_dir, arm, seed)
        offline[seed] = OfflineGap.load(path) if path.is_file() else None
    own = _own_records(res, arm)
    ablations = [ablation_change(own, _own_records(res, label), label)
                 for label in res.labels if res.base[label] == arm and label != arm]
    return ReadCheck(arm, gate, ablations, offline)


# --- tables ------------------------------------------------------------------------------------------------


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _mode_rank(mode: str | None) -> int:
    return ROLLOUT_MODES.index(mode) if mode in ROLLOUT_MODES else len(ROLLOUT_MODES)


def _ordered(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Rows in label order (a stable sort keeps the other columns' order)."""
    return sorted(rows, key=lambda r: labels.index(r["arm"]))


def _episode_keys(res: Results) -> dict[str, dict[Any, set[Any]]]:
    """Per arm, per training seed: the episodes it holds."""
    keys: dict[str, dict[Any, set[Any]]] = {label: {} for label in res.labels}
    for r in res.records:
        keys[r["arm"]].setdefault(r["train_seed"], set()).add(r["episode_id"])
    return keys


def _episode_set_warnings(res: Results) -> list[str]:
    keys = _episode_keys(res)
    seeds = sorted({seed for per_seed in keys.values() for seed in per_seed}, key=repr)
    warnings = []
    if any(set(per_seed) != set(seeds) for per_seed in keys.values()):
        held = "; ".join(f"{label} {', '.join(map(str, sorted(keys[label], key=repr)))}" for label in res.labels)
        warnings.append(f"The arms hold different training seeds ({held}): each paired comparison uses the seeds "
                        "both of its arms hold (its pair count says how many), and each arm's pooled success is over "
                        "its own seeds; run the missing seeds (`wm matrix`, or a piece merged with `wm report "
                        "--export`) to compare over all of them.")
    for seed in seeds:
        held = {label: per_seed[seed] for label, per_seed in keys.items() if seed in per_seed}
        union = set().union(*held.values())
        if any(episodes != union for episodes in held.values()):
            counts = ", ".join(f"{label} {len(e)} ({len(union - e)} missing)" for label, e in held.items())
            warnings.append(f"The arms were not run on the same episodes with training seed {seed} ({len(union)} "
                            f"distinct episodes in all; per arm: {counts}). Paired comparisons between mismatched "
                            "arms are not computed; finish the missing evaluations (rerun `wm matrix`) and report "
                            "again.")
    return warnings


def _zero_success_warnings(res: Results) -> list[str]:
    totals: dict[str, int] = {label: 0 for label in res.labels}
    for r in res.records:
        totals[r["arm"]] += bool(r["success"])
    return [f"{label} succeeded on none of its episodes (no task, no seed): a policy that never succeeds is a "
            "failed run, not evidence for or against world memory." for label, n in totals.items() if n == 0]


def _comparison_pairs(res: Results, facts: dict[str, ArmFacts], baselines: dict[str, str | None]) -> list[tuple[str, str]]:
    """(a, b) pairs compared as b - a: world-memory arms, then controls, vs their baseline; each world-memory
    arm vs each control of its family on its world source; each ablation vs its arm."""
    order = sorted(baselines, key=lambda arm: facts[arm].kind is not ArmKind.WORLD)
    pairs = [(baselines[arm], arm) for arm in order if baselines[arm] is not None]
    controls = [f for f in facts.values() if f.kind is ArmKind.CONTROL]
    pairs += [(c.name, w.name) for w in facts.values() if w.kind is ArmKind.WORLD for c in controls
              if c.world_source == w.world_source and c.same_family(w)]
    return pairs + [(res.base[label], label) for label in res.labels
                    if label != res.base[label] and res.base[label] in facts]


def _comparisons(res: Results, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ArmComparison | str]:
    """Each pair's comparison, or why it could not be made (e.g. unequal episode sets)."""
    out: dict[tuple[str, str], ArmComparison | str] = {}
    for a, b in pairs:
        try:
            out[a, b] = compare_arms(res.records, a, b)
        except ValueError as e:
            out[a, b] = str(e)
    return out


def _comparison_row(a: str, b: str, c: ArmComparison | str) -> dict[str, Any]:
    if isinstance(c, str):
        return {"arm": b, "versus": a} | dict.fromkeys(COMPARISON_COLUMNS) | {"error": c}
    return {
        "arm": b, "versus": a, "train_seeds": " ".join(map(str, c.train_seeds)), "n_pairs": c.n_pairs,
        "rate": c.summary_b.rate, "rate_versus": c.summary_a.rate,
        "diff": c.diff, "diff_ci_low": c.diff_ci_low, "diff_ci_high": c.diff_ci_high,
        "only_arm_succeeded": c.mcnemar.b01, "only_versus_succeeded": c.mcnemar.b10,
        "mcnemar_p": c.mcnemar.p_value, "error": "",
    }


def _ablation_rows(res: Results, overall: list[dict[str, Any]],
                   comparisons: dict[tuple[str, str], ArmComparison | str]) -> list[dict[str, Any]]:
    """Each world-memory arm with ablations: one row per rollout mode, the difference against the arm's own."""
    by_label = {r["arm"]: r for r in overall}
    rows = []
    for arm in res.labels:
        labels = [label for label in res.labels if res.base[label] == arm]
        if arm != res.base[arm] or len(labels) < 2:
            continue
        for label in labels:
            s = by_label[label]
            c = comparisons.get((arm, label))
            row = {"base_arm": arm, "memory_mode": res.mode[label], "arm": label, "n": s["n"],
                   "successes": s["successes"], "rate": s["rate"], "ci_low": s["ci_low"], "ci_high": s["ci_high"]}
            if isinstance(c, ArmComparison):
                row |= {"diff_vs_own": c.diff, "diff_ci_low": c.diff_ci_low, "diff_ci_high": c.diff_ci_high,
                        "mcnemar_p": c.mcnemar.p_value}
            rows.append(row)
    return rows


def _arm_rows(res: Results, overall: list[dict[str, Any]], facts: dict[str, ArmFacts],
              baselines: dict[str, str | None], checks: dict[str, ReadCheck]) -> list[dict[str, Any]]:
    """One row per arm: kind, policy family (backbone), world source, training memory, baseline, read-check and success
    (own memory)."""
    by_label = {r["arm"]: r for r in overall}
    rows = []
    for arm, f in facts.items():
        s, check = by_label[arm], checks.get(arm)
        rows.append({
            "arm": arm, "kind": str(f.kind), "family": str(f.family or ""), "world_source": f.world_source or "",
            "training_memory": f.training_memory or "",
            "rollout_memory": res.mode[arm] or "", "baseline": baselines.get(arm) or "",
            "read_check": check.summary() if check else "", "read_check_evidence": check.evidence() if check else "",
            "n": s["n"], "successes": s["successes"], "rate": s["rate"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
        })
    return rows


def _seed_rows(res: Results) -> list[dict[str, Any]]:
    """Per-arm aggregation over training seeds; empty when every arm has a single seed."""
    if all(len({r["train_seed"] for r in res.records if r["arm"] == label}) < 2 for label in res.labels):
        return []
    rows = []
    for label in res.labels:
        agg = aggregate_over_seeds(res.records, label)
        rows.append({
            "arm": label, "seeds": len(agg.per_seed),
            "per_seed": "; ".join(f"{seed}: {s.rate:.3f}"
                                  for seed, s in sorted(agg.per_seed.items(), key=lambda kv: _natural(str(kv[0])))),
            "mean_rate": agg.mean_rate, "std_rate": agg.std_rate, "pooled_n": agg.pooled.n,
            "pooled_rate": agg.pooled.rate, "pooled_ci_low": agg.pooled.ci_low, "pooled_ci_high": agg.pooled.ci_high,
        })
    return rows


# --- plots -------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any | None, path: Path) -> Path | None:
    """Write the figure atomically; None (nothing to plot) writes nothing."""
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


# Fixed colours per memory mode, so the same mode reads the same in every report; "own": a record without a
# recorded mode (the checkpoint's own).
MODE_COLOURS = {"own": "tab:blue", MemoryMode.PRED: "tab:blue", MemoryMode.NONE: "tab:gray",
                MemoryMode.ZERO: "tab:red", MemoryMode.SHUFFLE: "tab:orange", MemoryMode.OTHER: "tab:purple",
                MemoryMode.RANDOM: "tab:brown", MemoryMode.SIGNFLIP: "tab:pink", MemoryMode.ORACLE: "tab:green"}


def _success_figure(overall: list[dict[str, Any]], mode: dict[str, str | None]) -> Any:
    """One horizontal bar per evaluation (report order, top to bottom), coloured by its rollout memory mode,
    with its Wilson interval and "rate (successes/episodes)": readable at 40+ evaluations."""
    plt = _pyplot()
    labels = [r["arm"] for r in overall]
    modes = [mode.get(label) or "own" for label in labels]
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.3 * len(labels)))
    y = list(range(len(labels)))
    err = [[r["rate"] - r["ci_low"] for r in overall], [r["ci_high"] - r["rate"] for r in overall]]
    ax.barh(y, [r["rate"] for r in overall], xerr=err, capsize=2, alpha=0.85,
            color=[MODE_COLOURS[m] for m in modes])
    for k, r in enumerate(overall):
        ax.text(r["ci_high"] + 0.015, k, f"{r['rate']:.1%} ({r['successes']}/{r['n']})", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.25)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("success rate (Wilson 95% CI)")
    ax.set_title("Closed-loop success per evaluation")
    ax.grid(axis="x", alpha=0.3)
    present = list(dict.fromkeys(modes))
    handles = [plt.Rectangle((0, 0), 1, 1, color=MODE_COLOURS[m], alpha=0.85) for m in present]
    ax.legend(handles, present, title="memory at rollout", fontsize=7, title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))  # beside the bars: inside it would cover their labels
    return fig


Curves = dict[str, dict[str, tuple[list[int], list[float]]]]


def _training_scalars(run_dir: Path) -> Curves:
    """``"<arm> seed <k>" -> tag -> (steps, values)`` for the plotted tags of every training run."""
    curves: Curves = {}
    for tb in sorted((run_dir / "train").glob("*/seed*/tensorboard"), key=lambda p: _natural(str(p))):
        run = f"{tb.parent.parent.name} {tb.parent.name.replace('seed', 'seed ')}"
        curves[run] = read_scalars(tb, (*LOSS_TAGS, GATE_TAG))
    return curves


def _runs_by_arm(curves: Curves) -> dict[str, list[str]]:
    """``arm -> its runs`` ("<arm> seed <k>"), arms in natural order (E0 before E0-state, E2 before E10)."""
    arms: dict[str, list[str]] = {}
    for run in curves:
        arms.setdefault(run.rsplit(" seed ", 1)[0], []).append(run)
    return {arm: arms[arm] for arm in sorted(arms, key=_natural)}


def _curve_figure(curves: Curves, tags: Sequence[str], magnitude: bool = False) -> Any | None:
    """One panel per tag that some run logged; one colour per arm, its seeds alike, and one legend entry per arm
    beside the panels (dozens of runs stay legible). Log scale where every value is positive (losses span
    orders of magnitude); ``magnitude`` plots |value|, which the gate's read-check judges. None when no run
    logged any of the tags."""
    plt = _pyplot()
    present = [t for t in tags if any(t in c for c in curves.values())]
    if not present:
        return None
    arms = {arm: runs for arm, runs in _runs_by_arm(curves).items()
            if any(t in curves[r] for r in runs for t in present)}
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]  # ten distinct hues first, then their light shades
    styles = {arm: {"color": palette[k % len(palette)], "linestyle": "-" if k < len(palette) else "--"}
              for k, arm in enumerate(arms)}
    fig, axes = plt.subplots(1, len(present), figsize=(max(6.5, 4.5 * len(present)), 3.6), squeeze=False)
    for ax, tag in zip(axes[0], present):
        values_seen: list[float] = []
        for arm, runs in arms.items():
            for run in (r for r in runs if tag in curves[r]):
                steps, values = curves[run][tag]
                values = [abs(v) for v in values] if magnitude else list(values)
                values_seen += values
                ax.plot(steps, values, linewidth=1, marker="o" if len(steps) < 30 else None, markersize=3,
                        **styles[arm])
        if values_seen and (min(values_seen) > 0 or (magnitude and max(values_seen) > 0)):
            ax.set_yscale("log")  # a log axis leaves out non-positive points (a gate's exact 0 at step 0)
        ax.set_title(f"|{tag}|" if magnitude else tag)
        ax.set_xlabel("step")
    handles = [plt.Line2D([], [], linewidth=1, **style) for style in styles.values()]
    fig.legend(handles, list(styles), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
               title="arm (all seeds)", title_fontsize=7, ncol=1 + len(styles) // 25)
    fig.tight_layout()
    return fig


def _gate_figure(curves: Curves) -> Any | None:
    """|tanh(gate)| over training on a log scale, with the read-check's open and shut thresholds marked."""
    fig = _curve_figure(curves, (GATE_TAG,), magnitude=True)
    if fig is None:
        return None
    ax = fig.axes[0]
    ax.axhline(GATE_OPEN, color="black", linestyle=":", linewidth=1)
    ax.axhline(GATE_SHUT, color="black", linestyle="--", linewidth=1)
    for value, name, side in ((GATE_OPEN, "open", "bottom"), (GATE_SHUT, "shut", "top")):
        ax.text(1.0, value, f"{name} ({value:g})", transform=ax.get_yaxis_transform(), fontsize=7, va=side, ha="right")
    ax.set_ylabel("|tanh(gate)| (read-check thresholds)")
    return fig


# --- markdown ----------------------------------------------------------------------------------------------


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
    parts = [f"{f.world_source} latents" if f.world_source else "", f"trained on {f.training_memory} memory"
             if f.training_memory else ""]
    parts = [p for p in parts if p]
    return f"{f.name} ({', '.join(parts)})" if parts else f.name


def _verdicts(res: Results, facts: dict[str, ArmFacts], baselines: dict[str, str | None], checks: dict[str, ReadCheck],
              comparisons: dict[tuple[str, str], ArmComparison | str], alpha: float) -> list[str]:
    """The verdict lines: one per world-memory arm against its baseline, then the other comparisons."""
    world = [arm for arm, f in facts.items() if f.kind is ArmKind.WORLD]
    if not world:
        return [f"**No verdict on world memory: no arm of this run reads world memory (arms: "
                f"{', '.join(f'{a} ({f.kind})' for a, f in facts.items())}).**"]
    lines = []
    for arm in world:
        base = baselines[arm]
        c = comparisons.get((base, arm)) if base else None
        if base is None:
            lines.append(f"**No verdict on world memory for {arm}: this run has no baseline arm (an arm without "
                         f"world memory); arms: {', '.join(facts)}.**")
        elif isinstance(c, str):
            lines.append(f"**No verdict on world memory: {arm} and {base} could not be compared ({c}).**")
        else:
            lines.append(f"**Did world memory help? {_describe(facts[arm])}:** "
                         f"{world_memory_verdict(c, checks[arm], alpha)}"
                         f"{_capacity_note(arm, c, facts, comparisons, alpha)}")
    lines.append("")
    for (a, b), c in comparisons.items():
        if not isinstance(c, ArmComparison) or (facts.get(b) and facts[b].kind is ArmKind.WORLD and baselines[b] == a):
            continue
        if b in facts and facts[b].kind is ArmKind.CONTROL:
            lines.append(f"- Capacity control ({b} vs {a}): {verdict(c, alpha)}")
        elif b in facts:  # a world-memory arm vs a control
            lines.append(f"- World memory vs the capacity control ({b} vs {a}): "
                         f"{world_memory_verdict(c, checks[b], alpha, evidence=False)}")
        elif checks.get(a) and checks[a].state is ReadState.NOT_READ:
            change = next(x for x in checks[a].ablations if x.label == b)
            lines.append(f"- Rollout ablation ({b} vs {a}): {change.text(a)}, part of the read-check.")
        else:
            lines.append(f"- Rollout ablation ({b} vs {a}): {verdict(c, alpha)}")
    return lines


def _capacity_note(arm: str, against_baseline: ArmComparison, facts: dict[str, ArmFacts],
                   comparisons: dict[tuple[str, str], ArmComparison | str], alpha: float) -> str:
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
            notes.append(f" Against the capacity control {control} (the same world module, its memory zeroed): "
                         f"{verdict(c, alpha)} The gain over {against_baseline.arm_a} may be the module's capacity, "
                         "not its memory.")
    return "".join(notes)


def _markdown(run_dir: Path, res: Results, alpha: float, warnings: list[str], tables: dict[str, list[dict[str, Any]]],
              group_note: str, verdicts: list[str], checks: dict[str, ReadCheck],
              plots: dict[str, Path | None], out: Path) -> str:
    n_seeds = len({r["train_seed"] for r in res.records})
    lines = [f"# World-memory report: {run_dir.name}", "",
             f"{len(res.records)} closed-loop episodes, {len(res.labels)} arm(s), {n_seeds} training seed(s); "
             "built from the run folder's per-episode files (`eval/`) only.", "", "## Verdict", "", *verdicts, ""]
    if warnings:
        lines += ["## Warnings", "", *(f"- **Warning:** {w}" for w in warnings), ""]
    lines += ["## Arms, world sources and read-check", "",
              "Success with the arm's own memory (Wilson 95% interval, pooled over training seeds). Read-check: "
              "did the arm read its world memory (gate, rollout ablations, offline interventions; "
              "`world_modality.report.readcheck`)?", "",
              _md_table(["arm", "kind", "family (backbone)", "world source", "training memory", "baseline",
                         "read-check", "success", "95% CI", "successes / episodes"],
                        [[r["arm"], r["kind"], r["family"] or "-", r["world_source"] or "-", r["training_memory"] or "-",
                          r["baseline"] or "-", r["read_check"] or "-", _pct(r["rate"]), _ci(r["ci_low"], r["ci_high"]),
                          f"{r['successes']}/{r['n']}"] for r in tables["arms"]]), ""]
    lines += [f"- {arm}: **{check.summary()}**. Evidence: {check.evidence()}." for arm, check in checks.items()]
    lines += [""] if checks else []
    overall = tables["overall"]
    lines += ["## Overall success", "", "Wilson 95% intervals; pooled over training seeds.", "",
              _md_table(["arm", "memory mode", "success", "95% CI", "successes / episodes"],
                        [[r["arm"], res.mode[r["arm"]] or "-", _pct(r["rate"]), _ci(r["ci_low"], r["ci_high"]),
                          f"{r['successes']}/{r['n']}"] for r in overall]), ""]
    if plots["success"]:
        lines += ["![success per arm](success.png)", ""]
    lines += ["## Paired comparisons", "",
              "Difference = arm minus versus, on the same (episode, training seed) pairs of the training seeds both "
              f"arms hold; 95% paired bootstrap interval; two-sided exact McNemar test (alpha = {alpha:g}).", "",
              _md_table(["arm", "versus", "training seeds", "pairs", "arm success", "versus success",
                         "difference (points)", "95% CI", "only arm / only versus succeeded", "McNemar p"],
                        [_comparison_md(r) for r in tables["comparisons"]]) if tables["comparisons"]
              else "No pairs to compare (needs an arm without world memory with another arm, or an ablation with "
                   "its arm).", ""]
    if tables["ablations"]:
        lines += ["## Rollout memory ablations", "",
                  "Each world-memory checkpoint evaluated with its memory replaced at rollout; the difference is "
                  "against the arm's own rollout mode on the same episodes.", "",
                  _md_table(["arm", "memory mode", "success", "95% CI", "difference (points)", "95% CI", "McNemar p"],
                            [[r["base_arm"], r["memory_mode"] or "own", _pct(r["rate"]), _ci(r["ci_low"], r["ci_high"]),
                              *((f"{100 * r['diff_vs_own']:+.1f}", _ci(r["diff_ci_low"], r["diff_ci_high"]),
                                 f"{r['mcnemar_p']:.3g}") if "diff_vs_own" in r else ("(own mode)", "", ""))]
                             for r in tables["ablations"]]), ""]
    if tables["seeds"]:
        lines += ["## Training seeds", "", "Success rate per training seed, mean and sample std over seeds, and the "
                  "pooled rate with its Wilson interval.", "",
                  _md_table(["arm", "seeds", "per seed", "mean", "std", "pooled", "95% CI"],
                            [[r["arm"], r["seeds"], r["per_seed"], _pct(r["mean_rate"]),
                              "-" if r["seeds"] < 2 else _pct(r["std_rate"]),
                              _pct(r["pooled_rate"]), _ci(r["pooled_ci_low"], r["pooled_ci_high"])]
                             for r in tables["seeds"]]), ""]
    lines += ["## Success per task", "", _pivot(tables["per_task"], "task", res.labels), ""]
    lines += ["## MetaWorld task groups", "",
              _pivot(tables["task_groups"], "group", res.labels) if tables["task_groups"] else group_note, ""]
    lines += ["## Training", "", "Training loss is not evidence that world memory helps: only the closed-loop "
              "results above are.", ""]
    if plots["training_curves"]:
        lines += ["![training curves](training_curves.png)", ""]
    else:
        lines += [f"No training logs found under `{run_dir / 'train'}`.", ""]
    if plots["world_gate"]:
        lines += ["World-memory gate |tanh(gate)| over training (0 = memory ignored; the read-check calls a gate "
                  f"open from {GATE_OPEN:g} and shut below {GATE_SHUT:g}):", "",
                  "![world gate](world_gate.png)", ""]
    if res.videos:
        lines += ["## Rollout videos", ""]
        for label in res.labels:
            links = [f"[{caption}]({quote(os.path.relpath(path, out))})" for lab, caption, path in res.videos
                     if lab == label]
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
    return [r["arm"], r["versus"], r["train_seeds"].replace(" ", ", "), str(r["n_pairs"]), _pct(r["rate"]),
            _pct(r["rate_versus"]),
            f"{100 * r['diff']:+.1f}", _ci(r["diff_ci_low"], r["diff_ci_high"]),
            f"{r['only_arm_succeeded']} / {r['only_versus_succeeded']}", f"{r['mcnemar_p']:.3g}"]
