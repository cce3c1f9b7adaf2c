"""Tests for world_modality.stats: exact numbers computed by hand or in closed form."""

import math
import random
from math import comb

import numpy as np
import pytest

from world_modality.stats import (
    ArmComparison,
    McNemarResult,
    SuccessSummary,
    aggregate_over_seeds,
    compare_arms,
    mcnemar_exact,
    paired_bootstrap_diff,
    success_table,
    summarize,
    task_group_table,
    verdict,
    wilson_interval,
)

Z95 = 1.959963984540054


def wilson_closed_form(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def pairs(b01: int, b10: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """Paired outcomes (a, b) with the given discordant and concordant counts."""
    a = [False] * b01 + [True] * b10 + [True] * both + [False] * neither
    b = [True] * b01 + [False] * b10 + [True] * both + [False] * neither
    return a, b


def records(arm: str, outcomes: list[bool], task: str = "reach-v3", **extra) -> list[dict]:
    return [
        {"arm": arm, "episode_id": f"{task}|{i}|1000", "task": task, "success": s, **extra}
        for i, s in enumerate(outcomes)
    ]


# --- Wilson -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0))],
)
def test_wilson_hand_values(k, n, expected):
    low, high = wilson_interval(k, n)
    assert round(low, 4) == expected[0]
    assert round(high, 4) == expected[1]


@pytest.mark.parametrize(("k", "n"), [(8, 10), (21, 30), (1, 1), (37, 50)])
def test_wilson_matches_closed_form(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_closed_form(k, n), abs=1e-12)


def test_wilson_confidence_level():
    z90 = 1.6448536269514722
    assert wilson_interval(8, 10, 0.90) == pytest.approx(wilson_closed_form(8, 10, z90), abs=1e-12)


def test_wilson_bounds_are_exact_at_extremes():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="at least one trial, got n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes must lie in"):
        wilson_interval(11, 10)


def test_summarize():
    s = summarize([True] * 8 + [False] * 2)
    assert s == SuccessSummary(n=10, successes=8, rate=0.8, ci_low=s.ci_low, ci_high=s.ci_high)
    assert (round(s.ci_low, 4), round(s.ci_high, 4)) == (0.4902, 0.9433)


def test_summarize_rejects_empty_and_non_boolean():
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="booleans"):
        summarize(["False", True])


# --- McNemar ------------------------------------------------------------------------------------


def test_mcnemar_hand_value():
    a, b = pairs(b01=1, b10=6, both=5, neither=3)
    expected = 2 * sum(comb(7, k) for k in range(2)) / 2**7
    assert expected == 0.125
    assert mcnemar_exact(a, b) == McNemarResult(b01=1, b10=6, p_value=0.125)
    assert mcnemar_exact(b, a) == McNemarResult(b01=6, b10=1, p_value=0.125)


def test_mcnemar_second_hand_value():
    a, b = pairs(b01=2, b10=10, both=4)
    result = mcnemar_exact(a, b)
    assert (result.b01, result.b10) == (2, 10)
    assert result.p_value == pytest.approx(158 / 4096, rel=1e-12)  # 2 * (1 + 12 + 66) / 2**12


def test_mcnemar_balanced_and_no_discordant_pairs():
    assert mcnemar_exact(*pairs(b01=3, b10=3)).p_value == 1.0
    assert mcnemar_exact(*pairs(b01=0, b10=0, both=4, neither=2)) == McNemarResult(0, 0, 1.0)


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        mcnemar_exact([True, False, True], [True, False])


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a, b = list(rng.random(60) < 0.4), list(rng.random(60) < 0.6)
    first = paired_bootstrap_diff(a, b, n_resamples=2000, seed=3)
    assert paired_bootstrap_diff(a, b, n_resamples=2000, seed=3) == first
    assert paired_bootstrap_diff(a, b, n_resamples=2000, seed=4) != first


def test_bootstrap_contains_true_difference_with_paired_width():
    # b equals a except 5 of 50 pairs where only b succeeds: the difference is exactly 0.1.
    a, b = pairs(b01=5, b10=0, both=20, neither=25)
    result = paired_bootstrap_diff(a, b)
    assert result.diff == pytest.approx(0.1, abs=1e-12)
    assert 0.0 <= result.ci_low < 0.1 < result.ci_high <= 0.2
    # Resampling pairs gives the paired standard error sqrt(0.1 * 0.9 / 50), not the much wider
    # unpaired one (~0.099) that resampling the arms independently would give.
    expected_width = 2 * Z95 * math.sqrt(0.1 * 0.9 / 50)
    assert result.ci_high - result.ci_low == pytest.approx(expected_width, rel=0.2)


def test_bootstrap_identical_arms_and_errors():
    a = [True, False, True, True]
    result = paired_bootstrap_diff(a, a)
    assert (result.diff, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_diff([True], [True, False])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_bootstrap_diff([True], [False])


# --- compare_arms and verdict -------------------------------------------------------------------


def two_arm_results(b01: int, b10: int, both: int, neither: int) -> list[dict]:
    a, b = pairs(b01, b10, both, neither)
    results = records("E0", a) + records("E2", b)
    random.Random(0).shuffle(results)
    return results


def test_compare_arms_pairs_by_episode_id():
    results = two_arm_results(b01=10, b10=0, both=6, neither=4)
    c = compare_arms(results, "E0", "E2")
    assert isinstance(c, ArmComparison)
    assert c.n_pairs == 20
    assert (c.summary_a.successes, c.summary_b.successes) == (6, 16)
    assert (c.summary_a.rate, c.summary_b.rate) == (0.3, 0.8)
    assert c.diff == pytest.approx(0.5, abs=1e-12)
    assert c.diff_ci_low <= 0.5 <= c.diff_ci_high
    assert c.mcnemar == McNemarResult(b01=10, b10=0, p_value=2 / 2**10)
    # The record order does not matter, not even for the bootstrap interval.
    assert compare_arms(list(reversed(results)), "E0", "E2") == c


def test_compare_arms_pairs_by_train_seed():
    results = [
        {"arm": arm, "episode_id": "pick-place-v3|0|1000", "train_seed": seed, "success": ok}
        for arm, seed, ok in [("E0", 0, False), ("E0", 1, True), ("E2", 0, True), ("E2", 1, True)]
    ]
    c = compare_arms(results, "E0", "E2")
    assert c.n_pairs == 2
    assert c.mcnemar == McNemarResult(b01=1, b10=0, p_value=1.0)


def test_compare_arms_pairs_on_the_training_seeds_both_arms_hold():
    def rows(arm, seed, outcomes):
        return [
            {"arm": arm, "episode_id": f"reach-v3|{i}|1000", "train_seed": seed, "success": ok}
            for i, ok in enumerate(outcomes)
        ]

    results = rows("E0", 0, [False, False, True]) + rows("E0", 1, [True] * 3) + rows("E2", 0, [True] * 3)
    c = compare_arms(results, "E0", "E2")
    assert c.n_pairs == 3 and (c.summary_a.successes, c.summary_b.successes) == (1, 3)
    assert c.seeds_left_out == (("E0", 1),)
    assert "3 paired episodes; E0's training seed 1 left out: E2 lacks it)" in verdict(c)
    assert compare_arms(results + rows("E2", 1, [True] * 3), "E0", "E2").seeds_left_out == ()
    with pytest.raises(ValueError, match=r"hold no training seed in common \('E0': 0, 1; 'E2': 2\)"):
        compare_arms(rows("E0", 0, [True]) + rows("E0", 1, [True]) + rows("E2", 2, [True]), "E0", "E2")
    # Within a seed both hold the episode lists must still agree.
    with pytest.raises(ValueError, match=r"1 episode\(s\) of 'E0' missing from 'E2'"):
        compare_arms(results + rows("E2", 1, [True] * 2), "E0", "E2")


def test_compare_arms_rejects_unequal_episode_sets():
    a, b = pairs(b01=2, b10=1, both=3, neither=4)
    e2 = records("E2", b)
    del e2[3], e2[0]
    e2.append({"arm": "E2", "episode_id": "reach-v3|99|1000", "success": True})
    with pytest.raises(
        ValueError,
        match=r"2 episode\(s\) of 'E0' missing from 'E2', 1 episode\(s\) of 'E2' missing from 'E0'",
    ):
        compare_arms(records("E0", a) + e2, "E0", "E2")


def test_compare_arms_rejects_duplicates_and_unknown_arms():
    results = records("E0", [True, False]) + records("E2", [True, True])
    with pytest.raises(ValueError, match="more than once"):
        compare_arms(results + records("E2", [False]), "E0", "E2")
    with pytest.raises(ValueError, match=r"no results for arm 'E4' \(arms present: \['E0', 'E2'\]\)"):
        compare_arms(results, "E0", "E4")


def test_verdict_helped():
    c = compare_arms(two_arm_results(b01=10, b10=0, both=6, neither=4), "E0", "E2")
    assert verdict(c) == (
        f"E2 helped compared with E0: 80.0% vs 30.0% success (difference +50.0 points, 95% CI "
        f"[{100 * c.diff_ci_low:+.1f}, {100 * c.diff_ci_high:+.1f}]; "
        "exact McNemar p=0.00195, alpha=0.05, 20 paired episodes)."
    )


def test_verdict_hurt():
    c = compare_arms(two_arm_results(b01=10, b10=0, both=6, neither=4), "E2", "E0")
    assert verdict(c).startswith("E0 hurt compared with E2: 30.0% vs 80.0% success (difference -50.0 points")
    assert verdict(c).endswith("exact McNemar p=0.00195, alpha=0.05, 20 paired episodes).")


def test_verdict_no_significant_difference():
    c = compare_arms(two_arm_results(b01=1, b10=6, both=5, neither=3), "E0", "E2")
    text = verdict(c)
    assert text.startswith(
        "No significant difference between E2 and E0: 40.0% vs 73.3% success (difference -33.3 points, 95% CI"
    )
    assert text.endswith("exact McNemar p=0.125, alpha=0.05, 15 paired episodes).")
    # The same numbers are significant at a looser alpha.
    assert verdict(c, alpha=0.2).startswith("E2 hurt compared with E0")


# --- tables and seeds ---------------------------------------------------------------------------


def test_success_table_per_arm_and_task():
    results = (
        records("E0", [True] * 8 + [False] * 2, task="reach-v3")
        + records("E0", [False] * 10, task="pick-place-v3")
        + records("E2", [True] * 10, task="reach-v3")
    )
    rows = success_table(results)
    assert [(r["arm"], r["task"], r["n"], r["successes"], r["rate"]) for r in rows] == [
        ("E0", "reach-v3", 10, 8, 0.8),
        ("E0", "pick-place-v3", 10, 0, 0.0),
        ("E2", "reach-v3", 10, 10, 1.0),
    ]
    assert [(round(r["ci_low"], 4), round(r["ci_high"], 4)) for r in rows] == [
        (0.4902, 0.9433),
        (0.0, 0.2775),
        (0.7225, 1.0),
    ]
    overall = success_table(results, by=("arm",))
    assert [(r["arm"], r["n"], r["successes"]) for r in overall] == [("E0", 20, 8), ("E2", 10, 10)]


def test_success_table_missing_field():
    with pytest.raises(ValueError, match=r"result #0 lacks field\(s\) \['task'\]"):
        success_table([{"arm": "E0", "episode_id": "x", "success": True}])


def test_task_group_table():
    results = (
        records("E0", [True] * 3 + [False], task="reach-v3")
        + records("E0", [True, False], task="button-press-v3")
        + records("E0", [False] * 2, task="shelf-place-v3")
        + records("E0", [True, False, False], task="pick-place-v3")
        + records("E2", [True] * 2, task="pick-place-v3")
    )
    groups = {
        "easy": ("reach-v3", "button-press-v3"),
        "medium": ("basketball-v3",),
        "hard": ("pick-place-v3",),
        "very_hard": ("shelf-place-v3",),
    }
    rows = task_group_table(results, groups)
    assert [(r["arm"], r["group"], r["n"], r["successes"]) for r in rows] == [
        ("E0", "easy", 6, 4),
        ("E0", "hard", 3, 1),
        ("E2", "hard", 2, 2),
        ("E0", "very_hard", 2, 0),
    ]
    assert rows[0]["ci_low"] == pytest.approx(wilson_closed_form(4, 6)[0], abs=1e-12)


def test_task_group_table_rejects_unknown_tasks():
    with pytest.raises(ValueError, match=r"not in any task group: \['pick-place'\]"):
        task_group_table(records("E0", [True], task="pick-place"), {"hard": ("pick-place-v3",)})


def test_aggregate_over_seeds():
    results = [
        r
        for seed, k in [(0, 5), (1, 7), (2, 9)]
        for r in records("E2", [True] * k + [False] * (10 - k), train_seed=seed)
    ] + records("E0", [False] * 10, train_seed=0)
    agg = aggregate_over_seeds(results, "E2")
    assert {s: v.rate for s, v in agg.per_seed.items()} == {0: 0.5, 1: 0.7, 2: 0.9}
    assert agg.mean_rate == pytest.approx(0.7, abs=1e-12)
    assert agg.std_rate == pytest.approx(0.2, abs=1e-12)  # sample std (ddof=1)
    assert (agg.pooled.n, agg.pooled.successes) == (30, 21)
    assert (agg.pooled.ci_low, agg.pooled.ci_high) == pytest.approx(wilson_closed_form(21, 30), abs=1e-12)


def test_aggregate_over_seeds_single_seed_and_errors():
    single = aggregate_over_seeds(records("E0", [True, False], train_seed=0), "E0")
    assert single.mean_rate == 0.5
    assert math.isnan(single.std_rate)
    with pytest.raises(ValueError, match="lack 'train_seed'"):
        aggregate_over_seeds(records("E0", [True]), "E0")
    with pytest.raises(ValueError, match="no results for arm 'E2'"):
        aggregate_over_seeds(records("E0", [True], train_seed=0), "E2")
