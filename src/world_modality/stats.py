"""Statistics for paired closed-loop evaluation (docs/ARCHITECTURE.md, Experiment matrix).

Results are per-episode records (see ``Record``). Arms are compared on the same list of episodes (per training
seed, over the seeds both arms hold):
success rates with Wilson intervals, an exact McNemar test and a paired bootstrap interval on the
difference.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest, bootstrap

from lerobot_policy_world_modality.errors import InputError

Record = Mapping[str, Any]
"""One episode's result: ``arm``, ``episode_id`` (hashable, e.g. ``"task|layout|seed"``) and
``success`` (bool), optionally ``task`` and ``train_seed``."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"Wilson interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class SuccessSummary:
    """Success count and rate with a Wilson interval."""

    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float


def summarize(outcomes: Sequence[bool], confidence: float = 0.95) -> SuccessSummary:
    """Success rate of ``outcomes`` with its Wilson interval."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("cannot summarize an empty list of outcomes")
    successes = int(np.count_nonzero(_as_bools(outcomes)))
    low, high = wilson_interval(successes, n, confidence)
    return SuccessSummary(n=n, successes=successes, rate=successes / n, ci_low=low, ci_high=high)


@dataclass(frozen=True)
class McNemarResult:
    """Discordant pair counts and the two-sided exact McNemar p-value."""

    b01: int
    """Pairs where ``a`` failed and ``b`` succeeded."""
    b10: int
    """Pairs where ``a`` succeeded and ``b`` failed."""
    p_value: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test: a two-sided binomial test (p=0.5) on the discordant pairs."""
    x, y = _paired(a, b)
    b01, b10 = int(np.count_nonzero(~x & y)), int(np.count_nonzero(x & ~y))
    p_value = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return McNemarResult(b01=b01, b10=b10, p_value=float(p_value))


@dataclass(frozen=True)
class BootstrapResult:
    """Difference of success rates (``b - a``) with a paired percentile bootstrap interval."""

    diff: float
    ci_low: float
    ci_high: float


def paired_bootstrap_diff(
    a: Sequence[bool],
    b: Sequence[bool],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Mean of ``b - a`` over episode pairs; percentile interval from resampling the pairs."""
    x, y = _paired(a, b)
    if x.size < 2:
        raise ValueError(f"the paired bootstrap needs at least 2 pairs, got {x.size}")
    d = y.astype(float) - x.astype(float)
    ci = bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    return BootstrapResult(diff=float(d.mean()), ci_low=float(ci.low), ci_high=float(ci.high))


@dataclass(frozen=True)
class ArmComparison:
    """Arm ``b`` against arm ``a`` on the same paired episodes; ``diff`` is ``b`` minus ``a``."""

    arm_a: str
    arm_b: str
    summary_a: SuccessSummary
    summary_b: SuccessSummary
    n_pairs: int
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    confidence: float
    mcnemar: McNemarResult
    train_seeds: tuple[Hashable, ...]
    """The training seeds paired (those both arms hold)."""
    seeds_left_out: tuple[tuple[str, Hashable], ...] = ()
    """``(arm, training seed)`` of the seeds only one arm holds, left out of the pairs (an experiment run in
    pieces: one arm's seed not run yet)."""


def compare_arms(
    results: Iterable[Record],
    arm_a: str,
    arm_b: str,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ArmComparison:
    """Compare two arms on episodes paired by ``(episode_id, train_seed)``, over the training seeds both arms
    hold (a seed only one arm holds is left out and named in ``seeds_left_out``).

    Raises ValueError when the arms hold no training seed in common, when their episode sets differ within a
    seed both hold (another episode list, or an evaluation not finished), or when an arm repeats an episode.
    """
    results = list(results)
    by_key_a, by_key_b = _episodes(results, arm_a), _episodes(results, arm_b)
    seeds_a, seeds_b = {seed for _, seed in by_key_a}, {seed for _, seed in by_key_b}
    shared = seeds_a & seeds_b
    if not shared:
        raise InputError(
            f"arms {arm_a!r} and {arm_b!r} hold no training seed in common ({arm_a!r}: "
            f"{_seed_list(seeds_a)}; {arm_b!r}: {_seed_list(seeds_b)}): nothing to pair"
        )
    by_key_a = {k: v for k, v in by_key_a.items() if k[1] in shared}
    by_key_b = {k: v for k, v in by_key_b.items() if k[1] in shared}
    only_a, only_b = by_key_a.keys() - by_key_b.keys(), by_key_b.keys() - by_key_a.keys()
    if only_a or only_b:
        raise InputError(
            f"arms {arm_a!r} and {arm_b!r} were not run on the same episodes: "
            f"{len(only_a)} episode(s) of {arm_a!r} missing from {arm_b!r}, "
            f"{len(only_b)} episode(s) of {arm_b!r} missing from {arm_a!r} "
            f"(e.g. {sorted(only_a | only_b, key=repr)[:3]})"
        )
    left_out = tuple(
        (arm, seed) for arm, seeds in ((arm_a, seeds_a), (arm_b, seeds_b)) for seed in sorted(seeds - shared, key=repr)
    )
    keys = sorted(by_key_a, key=repr)  # independent of record order, so the bootstrap is too
    a, b = [by_key_a[k] for k in keys], [by_key_b[k] for k in keys]
    boot = paired_bootstrap_diff(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return ArmComparison(
        arm_a=arm_a,
        arm_b=arm_b,
        summary_a=summarize(a, confidence),
        summary_b=summarize(b, confidence),
        n_pairs=len(keys),
        diff=boot.diff,
        diff_ci_low=boot.ci_low,
        diff_ci_high=boot.ci_high,
        confidence=confidence,
        mcnemar=mcnemar_exact(a, b),
        train_seeds=tuple(sorted(shared, key=repr)),
        seeds_left_out=left_out,
    )


def _seed_list(seeds: Iterable[Hashable]) -> str:
    return ", ".join("none" if s is None else str(s) for s in sorted(seeds, key=repr))


def significant(comparison: ArmComparison, alpha: float = 0.05) -> bool:
    """Whether the exact McNemar test rejects "no difference" at level ``alpha``."""
    return comparison.mcnemar.p_value < alpha


def comparison_numbers(comparison: ArmComparison, alpha: float = 0.05) -> str:
    """The numbers behind a verdict: both rates, the difference with its interval, McNemar p, pairs."""
    c = comparison
    return (
        f"{c.summary_b.rate:.1%} vs {c.summary_a.rate:.1%} success "
        f"(difference {100 * c.diff:+.1f} points, {c.confidence:.0%} CI "
        f"[{100 * c.diff_ci_low:+.1f}, {100 * c.diff_ci_high:+.1f}]; "
        f"exact McNemar p={c.mcnemar.p_value:.3g}, alpha={alpha:g}, {c.n_pairs} paired episodes"
        + "".join(
            f"; {arm}'s training seed {seed} left out: {c.arm_b if arm == c.arm_a else c.arm_a} lacks it"
            for arm, seed in c.seeds_left_out
        )
        + ")"
    )


def verdict(comparison: ArmComparison, alpha: float = 0.05) -> str:
    """One sentence: whether arm ``b`` helped, hurt, or made no significant difference."""
    c = comparison
    if not significant(c, alpha):
        head = f"No significant difference between {c.arm_b} and {c.arm_a}"
    else:
        head = f"{c.arm_b} {'helped' if c.diff > 0 else 'hurt'} compared with {c.arm_a}"
    return f"{head}: {comparison_numbers(c, alpha)}."


def success_table(
    results: Iterable[Record], by: Sequence[str] = ("arm", "task"), confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Rows of ``by`` values (first-appearance order) with n, successes, rate, ci_low, ci_high."""
    groups: dict[tuple[Any, ...], list[bool]] = {}
    for i, record in enumerate(results):
        missing = [k for k in (*by, "success") if k not in record]
        if missing:
            raise InputError(f"result #{i} lacks field(s) {missing}: {dict(record)}")
        groups.setdefault(tuple(record[k] for k in by), []).append(record["success"])
    return [dict(zip(by, key)) | asdict(summarize(outcomes, confidence)) for key, outcomes in groups.items()]


def task_group_table(
    results: Iterable[Record],
    groups: Mapping[str, Sequence[str]],
    by: Sequence[str] = ("arm",),
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Success per task group (rows carry ``by`` values and ``group``), in the order of ``groups`` (group ->
    task names; a simulator's `Simulator.task_groups`).

    Raises ValueError if a result's task belongs to no group.
    """
    group_of = {task: g for g, tasks in groups.items() for task in tasks}
    order = list(groups)
    results = list(results)
    unknown = sorted({str(r.get("task")) for r in results} - group_of.keys())
    if unknown:
        raise InputError(f"tasks not in any task group: {unknown}")
    labelled = [dict(r) | {"group": group_of[r["task"]]} for r in results]
    labelled.sort(key=lambda r: order.index(r["group"]))
    return success_table(labelled, by=(*by, "group"), confidence=confidence)


@dataclass(frozen=True)
class SeedAggregate:
    """An arm's success over training seeds: per seed, mean and sample std of the rates, pooled."""

    arm: str
    per_seed: dict[Hashable, SuccessSummary]
    mean_rate: float
    std_rate: float
    """Sample standard deviation (ddof=1) of the per-seed rates; NaN with a single seed."""
    pooled: SuccessSummary


def aggregate_over_seeds(results: Iterable[Record], arm: str, confidence: float = 0.95) -> SeedAggregate:
    """Per-training-seed success of ``arm``, mean and std over seeds, and the pooled interval."""
    records = [r for r in results if r["arm"] == arm]
    if not records:
        raise InputError(f"no results for arm {arm!r}")
    if any("train_seed" not in r for r in records):
        raise InputError(f"some results of arm {arm!r} lack 'train_seed'")
    by_seed: dict[Hashable, list[bool]] = {}
    for r in records:
        by_seed.setdefault(r["train_seed"], []).append(r["success"])
    per_seed = {s: summarize(outcomes, confidence) for s, outcomes in by_seed.items()}
    rates = np.array([s.rate for s in per_seed.values()])
    return SeedAggregate(
        arm=arm,
        per_seed=per_seed,
        mean_rate=float(rates.mean()),
        std_rate=float(rates.std(ddof=1)) if rates.size > 1 else float("nan"),
        pooled=summarize([r["success"] for r in records], confidence),
    )


def _as_bools(outcomes: Sequence[Any]) -> np.ndarray:
    """Outcomes as a bool array; anything other than True/False/0/1 (e.g. "False") is an error."""
    bad = [o for o in outcomes if not (isinstance(o, (int, np.integer, np.bool_)) and o in (0, 1))]
    if bad:
        raise InputError(f"success outcomes must be booleans (or 0/1), got e.g. {bad[:3]}")
    return np.asarray(outcomes, dtype=bool)


def _paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("no paired outcomes")
    return _as_bools(a), _as_bools(b)


def _episodes(results: Sequence[Record], arm: str) -> dict[tuple[Hashable, Hashable], bool]:
    """``(episode_id, train_seed) -> success`` for one arm; an episode may appear only once."""
    episodes: dict[tuple[Hashable, Hashable], bool] = {}
    for r in results:
        if r["arm"] != arm:
            continue
        key = (r["episode_id"], r.get("train_seed"))
        if key in episodes:
            raise InputError(f"arm {arm!r} has episode {key} more than once")
        episodes[key] = r["success"]
    if not episodes:
        present = sorted({str(r["arm"]) for r in results})
        raise InputError(f"no results for arm {arm!r} (arms present: {present})")
    return episodes
