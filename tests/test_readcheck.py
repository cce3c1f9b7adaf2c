"""The read-check (did a world-memory arm read its memory?) on synthetic run folders, the verdicts that use it,
baselines whatever the arms are called, and `wm train`'s gate line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from world_modality import cli
from world_modality.atomic_io import append_jsonl, atomic_write_json
from world_modality.report import report_summary, write_report
from world_modality.report.arms import ArmFacts, ArmKind, arm_kind, resolve_baselines
from world_modality.report.readcheck import (
    GATE_OPEN,
    GATE_SHUT,
    OFFLINE_FLAT,
    OFFLINE_GAP,
    ROLLOUT_CHANGED,
    ROLLOUT_UNCHANGED,
    AblationChange,
    GateRun,
    OfflineGap,
    ReadCheck,
    ReadState,
    ablation_change,
    ablation_line,
    checkpoint_gate,
    gate_line,
    intervention_path,
    load_gate_run,
    world_memory_verdict,
)
from world_modality.stats import compare_arms

TASK = "reach-v3"
N = 40


def records(
    label: str,
    successes: set[int],
    mode: str,
    base: str | None = None,
    steps: int = 100,
    digest: str = "d0",
    seed: int = 0,
) -> list[dict]:
    base = base or label.split(":")[0]
    return [
        {
            "arm": label,
            "base_arm": base,
            "memory_mode": mode,
            "train_seed": seed,
            "task": TASK,
            "seed": 1000,
            "layout": i,
            "episode_id": f"metaworld|{TASK}|1000|{i}",
            "success": i in successes,
            "steps": steps if i in successes else 500,
            "action_digest": f"{digest}-{i}",
            "video": None,
            "checkpoint": f"/nonexistent/{base}",
        }
        for i in range(N)
    ]


def write_eval(run: Path, rows: list[dict]) -> None:
    for r in rows:
        append_jsonl(run / "eval" / r["arm"] / f"seed{r['train_seed']}" / "episodes.jsonl", r)


def write_gate_log(run: Path, arm: str, values: list[float], seed: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "train" / arm / f"seed{seed}" / "tensorboard"))
    for step, value in enumerate(values, 1):
        writer.add_scalar("train/world_gate", value, step)
    writer.close()


def write_intervention(run: Path, arm: str, ratios: dict[str, float], seed: int = 0) -> None:
    atomic_write_json(intervention_path(run, arm, seed), {"training_step": 10, "ratio_to_pred": ratios})


def write_checkpoint(run: Path, arm: str, gate: float | None, config: dict, seed: int = 0) -> None:
    """A `wm train` checkpoint folder as the report reads it: config.json, provenance, weights with the gate."""
    from safetensors.numpy import save_file

    pretrained = run / "train" / arm / f"seed{seed}" / "checkpoints" / "000010" / "pretrained_model"
    pretrained.mkdir(parents=True)
    (pretrained / "config.json").write_text(json.dumps(config))
    (pretrained / "world_modality.json").write_text("{}")
    weights = {"model.action_queries": np.zeros((2, 3), np.float32)}
    if gate is not None:
        weights["model.world.cross_attn.gate"] = np.array(gate, np.float32)
    save_file(weights, str(pretrained / "model.safetensors"))
    (pretrained.parent.parent / "last").symlink_to("000010")


BASE_SUCCESS = set(range(20))  # E0: 20 of 40
WORLD_SUCCESS = set(range(21))  # E2: 21 of 40, not significantly different from E0


def unread_run(run: Path) -> Path:
    """E2 whose memory was not read: gate shut, zero memory changes nothing, flat offline gap."""
    write_eval(run, records("E0", BASE_SUCCESS, "none"))
    write_eval(run, records("E2", WORLD_SUCCESS, "pred"))
    write_eval(run, records("E2:zero", WORLD_SUCCESS, "zero", digest="d1"))
    write_gate_log(run, "E2", [1e-4, 6e-4, 4e-4])
    write_intervention(run, "E2", {"zero": 1.002, "shuffle": 0.999, "oracle": 0.8})
    return run


# --- the decision ----------------------------------------------------------------------------------------------


def change(outcome: int, length: int = 0, n: int = 20) -> AblationChange:
    return AblationChange("E2:zero", n, outcome, max(length, outcome), None)


@pytest.mark.parametrize(
    ("gate", "ablation", "offline", "state"),
    [
        (GATE_OPEN, change(1), None, ReadState.READ),  # 1 of 20 = 5% changed outcome: read (the issue's bar)
        (None, change(3), None, ReadState.READ),  # the rollout decides alone when nothing contradicts it
        (5e-4, change(0), None, ReadState.NOT_READ),
        (5e-3, change(0), None, ReadState.NOT_READ),  # an ajar gate does not contradict unchanged rollouts
        (GATE_OPEN, change(0), None, ReadState.BORDERLINE),  # open gate, unchanged rollouts: conflicting
        (5e-4, change(4), None, ReadState.BORDERLINE),  # shut gate, changed rollouts: conflicting
        (5e-4, None, 1.0 + OFFLINE_FLAT / 2, ReadState.NOT_READ),  # no rollouts: gate and offline agree
        (0.2, None, 1.0 + OFFLINE_GAP, ReadState.READ),
        (5e-4, None, None, ReadState.BORDERLINE),  # one piece of evidence is too little
        (5e-3, change(0, length=3), None, ReadState.BORDERLINE),  # lengths changed on 15%: not "unchanged"
        # at scale an unread memory still flips an episode at the edge of success now and then (MT10: 1 of 600)
        (2e-3, change(1, length=25, n=600), 1.0, ReadState.NOT_READ),
        (2e-3, change(7, length=25, n=600), 1.0, ReadState.BORDERLINE),  # 1.2%: neither unchanged nor read
        (None, None, None, ReadState.BORDERLINE),
    ],
)
def test_read_state_from_the_evidence(gate, ablation, offline, state):
    check = ReadCheck(
        "E2",
        {0: GateRun(gate, gate, 10) if gate is not None else None},
        [ablation] if ablation else [],
        {0: OfflineGap({"zero": offline}) if offline else None},
    )
    assert check.state is state
    if state is ReadState.BORDERLINE:
        assert check.reason.startswith(("conflicting", "too little evidence"))


def test_thresholds_are_ordered():
    assert GATE_SHUT < GATE_OPEN and OFFLINE_FLAT < OFFLINE_GAP and 0 < ROLLOUT_UNCHANGED < ROLLOUT_CHANGED < 1


def test_every_seed_must_agree_on_the_gate():
    runs = {0: GateRun(0.5, 0.5, 10), 1: GateRun(2e-4, 3e-4, 10)}
    assert ReadCheck("E2", runs, [change(0)]).votes["the gate"] is None
    assert ReadCheck("E2", {0: GateRun(0.5, 0.5, 10), 1: None}).votes["the gate"] is None


def test_offline_vote_ignores_the_oracle_mode():
    assert OfflineGap({"oracle": 0.5, "zero": 1.001}).deviation == pytest.approx(0.001)
    assert OfflineGap({"oracle": 0.5}).deviation is None


# --- verdicts --------------------------------------------------------------------------------------------------


def test_unread_memory_is_never_no_significant_difference():
    rows = records("E0", BASE_SUCCESS, "none") + records("E2", WORLD_SUCCESS, "pred")
    comparison = compare_arms(rows, "E0", "E2")
    unread = ReadCheck("E2", {0: GateRun(4e-4, 6e-4, 10)}, [change(0)])
    text = world_memory_verdict(comparison, unread)
    assert text.startswith(
        "inconclusive: E2 did not read its world memory (evidence: |tanh(gate)| at the end of "
        "training 0.0004 (seed 0, peak 0.0006): shut (< 0.001); E2:zero changed the outcome of 0 of "
        "20 paired episodes vs E2"
    )
    assert "No significant difference" not in text and "52.5% vs 50.0% success" in text
    borderline = ReadCheck("E2", {0: GateRun(4e-4, 6e-4, 10)})
    assert world_memory_verdict(comparison, borderline).startswith("inconclusive: whether E2 read its world memory")
    read = ReadCheck("E2", {0: GateRun(0.3, 0.3, 10)}, [change(5)])
    assert world_memory_verdict(comparison, read).startswith("No significant difference between E2 and E0")
    assert "E2 read its world memory (evidence:" in world_memory_verdict(comparison, read)


def test_report_of_an_unread_memory_is_inconclusive(tmp_path):
    md = write_report(unread_run(tmp_path)).read_text()
    verdict = next(line for line in md.splitlines() if line.startswith("**Did world memory help?"))
    assert verdict.startswith(
        "**Did world memory help? E2:** inconclusive: E2 did not read its world memory "
        "(evidence: |tanh(gate)| at the end of training 0.0004 (seed 0, peak 0.0006): shut"
    )
    assert "E2:zero changed the outcome of 0 of 40 paired episodes vs E2 (length on 0, actions on 40)" in verdict
    assert "offline action loss without the memory's content x1.002 (zero, seed 0): flat (within 1%)" in verdict
    assert "No significant difference between E2 and E0" not in md
    assert "- Rollout ablation (E2:zero vs E2): E2:zero changed the outcome of 0 of 40" in md
    assert "| E2 | world memory | - | - | - | E0 | not read | 52.5% | [37.5, 67.1] | 21/40 |" in md
    arms = pd.read_csv(tmp_path / "report" / "arms.csv").set_index("arm")
    assert arms.loc["E2", "read_check"] == "not read" and arms.loc["E2", "baseline"] == "E0"
    assert report_summary(md).startswith("## Verdict") and "## Arms, world sources and read-check" in report_summary(md)
    assert "## Overall success" not in report_summary(md)


def test_report_read_and_borderline_arms_whatever_their_names(tmp_path):
    """Arms named freely: `base` has no world memory, `mem` reads it, `mem2` has only a gate to show."""
    write_eval(tmp_path, records("base", set(range(10)), "none"))
    write_eval(tmp_path, records("mem", set(range(24)), "pred"))
    write_eval(tmp_path, records("mem:shuffle", set(range(12)), "shuffle"))
    write_eval(tmp_path, records("mem2", set(range(11)), "pred"))
    write_gate_log(tmp_path, "mem", [0.01, 0.05, 0.04])
    write_intervention(tmp_path, "mem", {"shuffle": 1.4})
    write_gate_log(tmp_path, "mem2", [0.002, 0.003])
    md = write_report(tmp_path).read_text()
    lines = [line for line in md.splitlines() if line.startswith("**Did world memory help?")]
    assert lines[0].startswith("**Did world memory help? mem:** mem helped compared with base: 60.0% vs 25.0%")
    assert (
        "mem read its world memory (evidence: |tanh(gate)| at the end of training 0.04 (seed 0, peak 0.05): open"
        in lines[0]
    )
    assert lines[1].startswith(
        "**Did world memory help? mem2:** inconclusive: whether mem2 read its world memory is "
        "unclear (too little evidence"
    )
    assert "| mem2 | world memory | - | - | - | base | borderline (too little evidence" in md


def test_a_gain_over_the_baseline_is_weighed_against_the_capacity_control(tmp_path):
    """A read memory that beats the baseline but not the capacity control (the same module, memory zeroed): the
    headline says the gain may be the module's capacity; one that beats both says so too."""
    write_eval(tmp_path, records("base", set(range(10)), "none"))
    write_eval(tmp_path, records("ctl", set(range(22)), "zero"))
    write_eval(tmp_path, records("mem", set(range(24)), "pred"))
    write_gate_log(tmp_path, "mem", [0.01, 0.05, 0.04])
    write_intervention(tmp_path, "mem", {"shuffle": 1.4})
    md = write_report(tmp_path).read_text()
    headline = next(line for line in md.splitlines() if line.startswith("**Did world memory help? mem:**"))
    assert "mem helped compared with base" in headline and "mem read its world memory" in headline
    assert headline.endswith(
        "Against the capacity control ctl (the same world module, its memory zeroed): No "
        "significant difference between mem and ctl: 60.0% vs 55.0% success (difference +5.0 "
        "points, 95% CI [+0.0, +12.5]; exact McNemar p=0.5, alpha=0.05, 40 paired episodes). The "
        "gain over base may be the module's capacity, not its memory."
    )
    shutil.rmtree(tmp_path / "eval" / "ctl")
    write_eval(tmp_path, records("ctl", set(range(10)), "zero"))
    headline = next(
        line
        for line in write_report(tmp_path).read_text().splitlines()
        if line.startswith("**Did world memory help? mem:**")
    )
    assert "It also beat the capacity control ctl: 60.0% vs 25.0% success" in headline
    assert "may be the module's capacity" not in headline


def test_gate_comes_from_the_last_checkpoint_and_facts_from_its_config(tmp_path):
    unread_run(tmp_path)
    config = {
        "type": "world_transformer",
        "model_type": "F",
        "encoder_spec": {"name": "state"},
        "memory_source": "oracle",
        "world_memory_mode_train": "pred",
    }
    write_checkpoint(tmp_path, "E2", 0.2, config)
    write_checkpoint(tmp_path, "E0", None, config | {"model_type": "A"})
    run = load_gate_run(tmp_path / "train" / "E2" / "seed0")
    # The logged curve peaks at 6e-4; the checkpoint's gate, above it, is the peak (never a peak below the end).
    assert run == GateRun(pytest.approx(np.tanh(0.2)), pytest.approx(np.tanh(0.2)), 10)
    assert checkpoint_gate(tmp_path / "train" / "E0" / "seed0" / "checkpoints" / "last" / "pretrained_model") is None
    md = write_report(tmp_path).read_text()
    # An open gate against unchanged rollouts: conflicting evidence, so borderline, not "not read".
    assert (
        "| E2 | world memory | world_transformer | state | oracle | E0 | borderline (conflicting: read according to the gate, not read "
        "according to the rollout ablations and the offline interventions) |" in md
    )
    assert "| E0 | baseline | world_transformer | state | - | - |" in md
    assert "Did world memory help? E2 (state latents, trained on oracle memory):** inconclusive: whether E2" in md


def test_baselines_per_world_source_and_ambiguity():
    arms = [
        ArmFacts("E0", ArmKind.BASELINE, "learned"),
        ArmFacts("E0s", ArmKind.BASELINE, "state"),
        ArmFacts("E2", ArmKind.WORLD, "learned"),
        ArmFacts("E2s", ArmKind.WORLD, "state"),
        ArmFacts("E1", ArmKind.CONTROL, "learned"),
    ]
    assert resolve_baselines(arms) == {"E2": "E0", "E2s": "E0s", "E1": "E0"}
    assert resolve_baselines(arms, "E0s") == {"E2": "E0s", "E2s": "E0s", "E1": "E0s"}
    with pytest.raises(ValueError, match=r"baseline 'E2' is not an arm without world memory"):
        resolve_baselines(arms, "E2")
    unknown = [ArmFacts("A", ArmKind.BASELINE), ArmFacts("B", ArmKind.BASELINE), ArmFacts("F", ArmKind.WORLD)]
    with pytest.raises(
        ValueError,
        match=r"the baseline of arm 'F' is ambiguous: A, B have no world memory\. Name it "
        r"in the matrix file \(report: \{baseline: A\}\) or with `wm report --baseline A`",
    ):
        resolve_baselines(unknown)
    assert resolve_baselines([ArmFacts("F", ArmKind.WORLD)]) == {"F": None}
    assert [arm_kind(m) for m in (None, "none", "zero", "shuffle", "pred", "oracle")] == [
        ArmKind.BASELINE,
        ArmKind.BASELINE,
        ArmKind.CONTROL,
        ArmKind.CONTROL,
        ArmKind.WORLD,
        ArmKind.WORLD,
    ]


def test_an_arm_is_judged_against_its_own_familys_baseline_and_backbone():
    """A SmolVLA-world arm's baseline is the SmolVLA arm on its backbone, never model A nor SmolVLA on another VLM;
    an arm of a family without a baseline has none, and naming another family's arm as the baseline is refused."""
    from lerobot_policy_world_modality.families import PolicyFamily, policy_family

    small, real = (policy_family("smolvla_world", {"vlm_model_name": f"/models/{name}/"}) for name in ("small", "500m"))
    assert small == PolicyFamily("smolvla", "small") == policy_family("smolvla", {"vlm_model_name": "/elsewhere/small"})
    qwen = policy_family("qwen_vla_world", {"backbone": "qwen3_vl_2b_instruct", "backbone_path": None})
    assert qwen == PolicyFamily("qwen_vla", "qwen3_vl_2b_instruct") and str(qwen) == "qwen_vla (qwen3_vl_2b_instruct)"
    small_family = PolicyFamily("world_transformer")
    arms = [
        ArmFacts("E0", ArmKind.BASELINE, "learned", family=small_family),
        ArmFacts("E2", ArmKind.WORLD, "learned", family=small_family),
        ArmFacts("S-E0", ArmKind.BASELINE, "learned", family=small),
        ArmFacts("S-E1", ArmKind.CONTROL, "learned", family=small),
        ArmFacts("S-E2", ArmKind.WORLD, "learned", family=small),
        ArmFacts("R-E2", ArmKind.WORLD, "learned", family=real),
        ArmFacts("Q-E2", ArmKind.WORLD, "learned", family=qwen),
    ]
    assert resolve_baselines(arms) == {"E2": "E0", "S-E1": "S-E0", "S-E2": "S-E0", "R-E2": None, "Q-E2": None}
    with pytest.raises(
        ValueError,
        match=r"baseline 'E0' is a world_transformer arm, and S-E1 \(smolvla \(small\)\), "
        r"S-E2 .* of another family or backbone",
    ):
        resolve_baselines(arms, "E0")
    with pytest.raises(ValueError, match="unknown policy type 'act'"):
        policy_family("act", {})


def test_every_policy_type_has_a_family():
    from lerobot_policy_world_modality import POLICY_TYPES
    from lerobot_policy_world_modality.families import FAMILY_OF_TYPE

    assert set(POLICY_TYPES) <= set(FAMILY_OF_TYPE)


def test_report_refuses_an_ambiguous_baseline_and_takes_a_named_one(tmp_path):
    unread_run(tmp_path)
    write_eval(tmp_path, records("E0b", set(range(5)), "none"))
    with pytest.raises(ValueError, match="the baseline of arm 'E2' is ambiguous: E0, E0b"):
        write_report(tmp_path)
    assert cli.main(["report", str(tmp_path), "--baseline", "E0b"]) == 0
    assert "inconclusive: E2 did not read its world memory" in (tmp_path / "report" / "report.md").read_text()
    assert pd.read_csv(tmp_path / "report" / "arms.csv").set_index("arm").loc["E2", "baseline"] == "E0b"


# --- `wm eval` and `wm train` lines ----------------------------------------------------------------------------


def test_ablation_line_says_when_nothing_changed():
    own = records("E2", WORLD_SUCCESS, "pred")
    same = ablation_change(own, records("E2:zero", WORLD_SUCCESS, "zero"), "E2:zero")
    assert (same.n_pairs, same.outcome, same.length, same.actions) == (40, 0, 0, 0)
    assert ablation_line(same, "E2") == (
        "E2:zero equals E2 on every one of the 40 paired episodes (success, length "
        "and actions): at rollout the policy did not read its world memory"
    )
    moved = ablation_change(own, records("E2:zero", WORLD_SUCCESS - {3}, "zero", digest="x"), "E2:zero")
    assert ablation_line(moved, "E2") == (
        "E2:zero changed the outcome of 1 of 40 paired episodes vs E2 (length on 1, actions on 40)"
    )


def test_gate_line():
    assert gate_line(GateRun(4e-4, 9e-4, 1500)).startswith(
        "world gate: shut: |tanh(gate)| = 0.0004 at step 1500, "
        "peak 0.0009 during training (open at >= 0.01, shut below 0.001"
    )
    assert gate_line(GateRun(0.05, 0.06, 10)).startswith("world gate: open: |tanh(gate)| = 0.05")
    assert gate_line(None) == "world gate: none (this policy has no world module)"


@pytest.fixture(scope="module")
def state_latents(metaworld_dataset) -> Path:
    from world_modality.latents import compute_latents

    return compute_latents(metaworld_dataset, "state")


def test_wm_train_ends_with_the_gate_line(metaworld_dataset, state_latents, tmp_path, capsys):
    common = [
        str(metaworld_dataset),
        "--latents",
        str(state_latents),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert cli.main(["train", *common, "--model-type", "F", "--out", str(tmp_path / "F")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    gate = load_gate_run(tmp_path / "F")
    assert gate.step == 3 and 0 < gate.final < GATE_SHUT  # three small steps from an exact zero
    assert last == gate_line(gate) and last.startswith("world gate: shut: |tanh(gate)| = ")
    assert cli.main(["train", *common, "--model-type", "A", "--out", str(tmp_path / "A")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "world gate: none (this policy has no world module)"
