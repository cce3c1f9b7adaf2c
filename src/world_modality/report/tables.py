"""The report's statistics tables (rows of dicts, written as CSV and read by the Markdown): success per arm, task
and task group, paired comparisons, rollout ablations, training seeds, the arms with their facts; and the warnings
the records call for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from world_modality.report.arms import ArmFacts, ArmKind
from world_modality.report.readcheck import ReadCheck
from world_modality.report.results import Results, natural_order
from world_modality.sim import episodes_simulator
from world_modality.stats import ArmComparison, aggregate_over_seeds, compare_arms, success_table, task_group_table

COMPARISON_COLUMNS = (
    "train_seeds",
    "n_pairs",
    "rate",
    "rate_versus",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "only_arm_succeeded",
    "only_versus_succeeded",
    "mcnemar_p",
)


def in_label_order(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Rows in label order (a stable sort keeps the other columns' order)."""
    return sorted(rows, key=lambda r: labels.index(r["arm"]))


def success_rows(res: Results, by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Success with Wilson intervals per ``by`` (``arm`` first), in the report's label order."""
    return in_label_order(success_table(res.records, by=by), res.labels)


@dataclass(frozen=True)
class TaskGroups:
    """The task-group rollup: its rows (success per arm and group of the simulator the episodes ran in), or why
    there are none; ``simulator``: the title of that simulator (None: the episodes name none, or several)."""

    rows: list[dict[str, Any]]
    note: str
    simulator: str | None


def task_groups(res: Results) -> TaskGroups:
    simulator = episodes_simulator(r["suite"] for r in res.records if "suite" in r)
    title = simulator.title if simulator is not None else None
    groups = simulator.task_groups() if simulator is not None else {}
    if not groups:
        return TaskGroups([], "No task-group rollup: the episodes' simulator defines no task groups.", title)
    try:
        return TaskGroups(in_label_order(task_group_table(res.records, groups, by=("arm",)), res.labels), "", title)
    except ValueError as e:  # tasks outside the simulator's groups
        return TaskGroups([], f"No task-group rollup: {e}.", title)


def _episode_keys(res: Results) -> dict[str, dict[Any, set[Any]]]:
    """Per arm, per training seed: the episodes it holds."""
    keys: dict[str, dict[Any, set[Any]]] = {label: {} for label in res.labels}
    for r in res.records:
        keys[r["arm"]].setdefault(r["train_seed"], set()).add(r["episode_id"])
    return keys


def episode_set_warnings(res: Results) -> list[str]:
    keys = _episode_keys(res)
    seeds = sorted({seed for per_seed in keys.values() for seed in per_seed}, key=repr)
    warnings = []
    if any(set(per_seed) != set(seeds) for per_seed in keys.values()):
        held = "; ".join(f"{label} {', '.join(map(str, sorted(keys[label], key=repr)))}" for label in res.labels)
        warnings.append(
            f"The arms hold different training seeds ({held}): each paired comparison uses the seeds "
            "both of its arms hold (its pair count says how many), and each arm's pooled success is over "
            "its own seeds; run the missing seeds (`wm matrix`, or a piece merged with `wm report "
            "--export`) to compare over all of them."
        )
    for seed in seeds:
        held = {label: per_seed[seed] for label, per_seed in keys.items() if seed in per_seed}
        union = set().union(*held.values())
        if any(episodes != union for episodes in held.values()):
            counts = ", ".join(f"{label} {len(e)} ({len(union - e)} missing)" for label, e in held.items())
            warnings.append(
                f"The arms were not run on the same episodes with training seed {seed} ({len(union)} "
                f"distinct episodes in all; per arm: {counts}). Paired comparisons between mismatched "
                "arms are not computed; finish the missing evaluations (rerun `wm matrix`) and report "
                "again."
            )
    return warnings


def device_warnings(res: Results, pairs: list[tuple[str, str]]) -> list[str]:
    """Where the episodes of one evaluation, or of two compared ones with the same training seed, were acted on
    different devices (records name theirs): the same checkpoint can act differently on another device (float
    rounding), so such a paired difference is not the arms' alone. Records without a device are not judged."""
    devices: dict[tuple[str, Any], set[str]] = {}
    for r in res.records:
        if "device" in r:
            devices.setdefault((r["arm"], r["train_seed"]), set()).add(r["device"])
    warnings = [
        f"The episodes of {label} (training seed {seed}) were acted on several devices ({', '.join(sorted(held))}): "
        "its success mixes them."
        for (label, seed), held in devices.items()
        if len(held) > 1
    ]
    for versus, arm in pairs:
        seeds = [s for (label, s), held in devices.items() if label == versus and devices.get((arm, s), held) != held]
        if seeds:
            on = "; ".join(
                f"seed {s}: {versus} on {', '.join(sorted(devices[versus, s]))}, "
                f"{arm} on {', '.join(sorted(devices[arm, s]))}"
                for s in sorted(seeds, key=repr)
            )
            warnings.append(
                f"{arm} and {versus} were evaluated on different devices ({on}): their paired difference includes "
                "how differently the devices compute the same policy; evaluate both on one device to compare the arms "
                "alone."
            )
    return warnings


def zero_success_warnings(res: Results) -> list[str]:
    totals: dict[str, int] = {label: 0 for label in res.labels}
    for r in res.records:
        totals[r["arm"]] += bool(r["success"])
    return [
        f"{label} succeeded on none of its episodes (no task, no seed): a policy that never succeeds is a "
        "failed run, not evidence for or against world memory."
        for label, n in totals.items()
        if n == 0
    ]


def comparison_pairs(
    res: Results, facts: dict[str, ArmFacts], baselines: dict[str, str | None]
) -> list[tuple[str, str]]:
    """(a, b) pairs compared as b - a: world-memory arms, then controls, vs their baseline; each world-memory
    arm vs each control of its family on its world source; each ablation vs its arm."""
    order = sorted(baselines, key=lambda arm: facts[arm].kind is not ArmKind.WORLD)
    pairs = [(baselines[arm], arm) for arm in order if baselines[arm] is not None]
    controls = [f for f in facts.values() if f.kind is ArmKind.CONTROL]
    pairs += [
        (c.name, w.name)
        for w in facts.values()
        if w.kind is ArmKind.WORLD
        for c in controls
        if c.world_source == w.world_source and c.same_family(w)
    ]
    return pairs + [
        (res.base[label], label) for label in res.labels if label != res.base[label] and res.base[label] in facts
    ]


def compare_pairs(res: Results, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ArmComparison | str]:
    """Each pair's comparison, or why it could not be made (e.g. unequal episode sets)."""
    out: dict[tuple[str, str], ArmComparison | str] = {}
    for a, b in pairs:
        try:
            out[a, b] = compare_arms(res.records, a, b)
        except ValueError as e:
            out[a, b] = str(e)
    return out


def comparison_row(a: str, b: str, c: ArmComparison | str) -> dict[str, Any]:
    if isinstance(c, str):
        return {"arm": b, "versus": a} | dict.fromkeys(COMPARISON_COLUMNS) | {"error": c}
    return {
        "arm": b,
        "versus": a,
        "train_seeds": " ".join(map(str, c.train_seeds)),
        "n_pairs": c.n_pairs,
        "rate": c.summary_b.rate,
        "rate_versus": c.summary_a.rate,
        "diff": c.diff,
        "diff_ci_low": c.diff_ci_low,
        "diff_ci_high": c.diff_ci_high,
        "only_arm_succeeded": c.mcnemar.b01,
        "only_versus_succeeded": c.mcnemar.b10,
        "mcnemar_p": c.mcnemar.p_value,
        "error": "",
    }


def ablation_rows(
    res: Results, overall: list[dict[str, Any]], comparisons: dict[tuple[str, str], ArmComparison | str]
) -> list[dict[str, Any]]:
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
            row = {
                "base_arm": arm,
                "memory_mode": res.mode[label],
                "arm": label,
                "n": s["n"],
                "successes": s["successes"],
                "rate": s["rate"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
            }
            if isinstance(c, ArmComparison):
                row |= {
                    "diff_vs_own": c.diff,
                    "diff_ci_low": c.diff_ci_low,
                    "diff_ci_high": c.diff_ci_high,
                    "mcnemar_p": c.mcnemar.p_value,
                }
            rows.append(row)
    return rows


def arm_rows(
    res: Results,
    overall: list[dict[str, Any]],
    facts: dict[str, ArmFacts],
    baselines: dict[str, str | None],
    checks: dict[str, ReadCheck],
) -> list[dict[str, Any]]:
    """One row per arm: kind, policy family (backbone), world source, training memory, baseline, read-check and success
    (own memory)."""
    by_label = {r["arm"]: r for r in overall}
    rows = []
    for arm, f in facts.items():
        s, check = by_label[arm], checks.get(arm)
        rows.append(
            {
                "arm": arm,
                "kind": str(f.kind),
                "family": str(f.family or ""),
                "world_source": f.world_source or "",
                "training_memory": f.training_memory or "",
                "rollout_memory": res.mode[arm] or "",
                "baseline": baselines.get(arm) or "",
                "read_check": check.summary() if check else "",
                "read_check_evidence": check.evidence() if check else "",
                "n": s["n"],
                "successes": s["successes"],
                "rate": s["rate"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
            }
        )
    return rows


def seed_rows(res: Results) -> list[dict[str, Any]]:
    """Per-arm aggregation over training seeds; empty when every arm has a single seed."""
    if all(len({r["train_seed"] for r in res.records if r["arm"] == label}) < 2 for label in res.labels):
        return []
    rows = []
    for label in res.labels:
        agg = aggregate_over_seeds(res.records, label)
        rows.append(
            {
                "arm": label,
                "seeds": len(agg.per_seed),
                "per_seed": "; ".join(
                    f"{seed}: {s.rate:.3f}"
                    for seed, s in sorted(agg.per_seed.items(), key=lambda kv: natural_order(str(kv[0])))
                ),
                "mean_rate": agg.mean_rate,
                "std_rate": agg.std_rate,
                "pooled_n": agg.pooled.n,
                "pooled_rate": agg.pooled.rate,
                "pooled_ci_low": agg.pooled.ci_low,
                "pooled_ci_high": agg.pooled.ci_high,
            }
        )
    return rows
