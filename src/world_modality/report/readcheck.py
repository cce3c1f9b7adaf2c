"""The read-check: did a world-memory arm read its memory? (docs/ARCHITECTURE.md, Read-check)

A comparison of a world-memory arm with its baseline says something about world memory only if the arm read
its memory. Three kinds of evidence, each judged against a named threshold:

- the gate: |tanh(gate)| at the end of training (the last checkpoint's weights; the root mean square over the
  gate's elements, which is |tanh(gate)| for the scalar gate) and its peak during training (TensorBoard and the end);
- the rollout ablations: how many paired episodes change outcome (and length, and actions) when the memory is
  replaced at rollout (zero, shuffle, random, signflip, oracle) instead of the arm's own;
- the offline intervention gap (`wm intervene`): the validation action loss with the memory's content removed
  (zero, random, shuffle, signflip) relative to the loss with the arm's predicted memory.

Each says read, not read, or nothing (missing, or between its thresholds). Evidence that conflicts makes the
check borderline. Otherwise the rollout ablations decide when they say something (the closed loop is what a
verdict is about); without them, two pieces of evidence must agree. `world_memory_verdict` then never calls
an unread memory "no significant difference": it is "inconclusive".
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from world_modality.report.arms import CONTENT_FREE_MODES
from world_modality.stats import ArmComparison, comparison_numbers, significant, verdict

# |tanh(gate)| at or above which the gate is open: 10x the largest value of runs whose memory provably went
# unread (issue 16: MT10 stayed within 8e-4, the demo's E2 below 1e-3, with 0 of 200 / 40 outcomes changed).
GATE_OPEN = 1e-2
# |tanh(gate)| below which the gate is shut: the level of those unread runs.
GATE_SHUT = 1e-3
# Share of paired episodes whose outcome changes when the memory is replaced at rollout that shows the memory
# is read (issue 16's bar: a zero-memory rollout differs from the arm's own on >= 5% of paired episodes). The
# same share of episodes changing only their length is too little to say "not read".
ROLLOUT_CHANGED = 0.05
# Share of changed outcomes at or below which a rollout ablation counts as unchanged. Not zero: an unread memory
# still moves the actions in their last bits (the action digest differs in every episode even at a gate of 1e-4),
# and the simulator turns that into a flip on the few episodes at the edge of success. On MT10 the default E2
# (gate <= 2.4e-3, offline loss flat) flipped 3 of 600 outcomes and the world-loss warmup 1 of 600, so "no outcome
# changed" would stop being reachable as runs grow (MT50 x 3 seeds: 3,000 pairs). 1%: twice that noise, a fifth
# of the bar for "read".
ROLLOUT_UNCHANGED = 0.01
# Relative change of the validation action loss without the memory's content that shows the policy relies on
# it offline (5%: well above the run-to-run noise of a seeded validation pass, which is 0).
OFFLINE_GAP = 0.05
# At most this relative change, for every content-free mode: the content does not matter offline.
OFFLINE_FLAT = 0.01

GATE_TAG = "train/world_gate"  # TensorBoard tag of tanh(gate), logged by `wm train` at every logged step
GATE_PARAMETER = "cross_attn.gate"  # the gated cross-attention's gate, in every policy family's weights
INTERVENTIONS_DIR = "intervene"  # RUN_DIR/intervene/<arm>/seed<k>.json: `wm intervene --json` results
WEIGHTS_FILE = "model.safetensors"
# Beside a checkpoint's configs in a results-only export (`wm report --export`): its gate, the weights left out.
GATE_FILE = "world_gate.json"

Record = Mapping[str, Any]


class ReadState(StrEnum):
    READ = "read"
    NOT_READ = "not read"
    BORDERLINE = "borderline"


def intervention_path(run_dir: Path, arm: str, seed: int) -> Path:
    return Path(run_dir) / INTERVENTIONS_DIR / arm / f"seed{seed}.json"


# --- the gate --------------------------------------------------------------------------------------------------


def checkpoint_gate(pretrained: Path) -> float | None:
    """|tanh(gate)| of a checkpoint's weights (RMS over the gate's elements), or as an export recorded it without
    them; None without a world module."""
    from safetensors import safe_open

    path = Path(pretrained) / WEIGHTS_FILE
    if not path.is_file():
        recorded = Path(pretrained) / GATE_FILE
        return json.loads(recorded.read_text())["abs_tanh_gate"] if recorded.is_file() else None
    with safe_open(str(path), framework="numpy") as f:
        gates = [f.get_tensor(k) for k in f.keys() if k.endswith(GATE_PARAMETER)]
    if not gates:
        return None
    values = np.tanh(np.concatenate([g.astype(np.float64).ravel() for g in gates]))
    return float(np.sqrt(np.mean(values**2)))


def read_scalars(tensorboard_dir: Path, tags: Iterable[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``tag -> (steps, values)`` of the given tags that a TensorBoard folder holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    present = set(acc.Tags()["scalars"]) & set(tags)
    return {t: ([e.step for e in acc.Scalars(t)], [e.value for e in acc.Scalars(t)]) for t in present}


@dataclass(frozen=True)
class GateRun:
    """One training run's gate: at its end and its largest value during training."""

    final: float | None  # |tanh(gate)| of the last checkpoint (else the last logged value)
    peak: float | None  # the largest |tanh(gate)|, logged or final
    step: int | None  # the training step of ``final``


def load_gate_run(train_run: Path, trajectory: tuple[Sequence[int], Sequence[float]] | None = None) -> GateRun | None:
    """The gate of a `wm train` run folder (``trajectory``: its logged tanh(gate), read from its TensorBoard
    folder when not given); None when the run has neither a world-module checkpoint nor a logged gate."""
    from world_modality.training.checkpoint import PRETRAINED, last_checkpoint

    train_run = Path(train_run)
    if trajectory is None and (train_run / "tensorboard").is_dir():
        trajectory = read_scalars(train_run / "tensorboard", [GATE_TAG]).get(GATE_TAG)
    last = last_checkpoint(train_run)
    final = checkpoint_gate(last / PRETRAINED) if last is not None else None
    step = int(last.name) if final is not None else None
    steps, values = trajectory if trajectory else ([], [])
    if final is None and values:
        final, step = abs(values[-1]), steps[-1]
    if final is None:
        return None
    # A step logs the gate before its update, so the last checkpoint's value can exceed every logged one.
    return GateRun(final, max([final, *map(abs, values)]) if values else None, step)


def gate_vote(runs: Mapping[Hashable, GateRun | None]) -> bool | None:
    finals = [r.final for r in runs.values() if r is not None]
    if not finals or len(finals) < len(runs):
        return None
    if all(f >= GATE_OPEN for f in finals):
        return True
    if all(f < GATE_SHUT for f in finals):
        return False
    return None


def gate_line(run: GateRun | None) -> str:
    """The one line `wm train` ends with: did the gate open?"""
    if run is None:
        return "world gate: none (this policy has no world module)"
    state = "open" if run.final >= GATE_OPEN else "shut" if run.final < GATE_SHUT else "ajar"
    peak = f", peak {run.peak:.2g} during training" if run.peak is not None else ""
    return (
        f"world gate: {state}: |tanh(gate)| = {run.final:.2g} at step {run.step}{peak} (open at >= {GATE_OPEN:g}, "
        f"shut below {GATE_SHUT:g}: the read-check's thresholds)"
        + ("" if state == "open" else "; the policy barely reads its world memory")
    )


def _gate_text(runs: Mapping[Hashable, GateRun | None]) -> str:
    if not runs or all(r is None for r in runs.values()):
        return "no gate record (no checkpoint or training log)"
    parts = [
        f"none (seed {seed})"
        if r is None
        else f"{r.final:.2g} (seed {seed}" + (f", peak {r.peak:.2g})" if r.peak is not None else ")")
        for seed, r in runs.items()
    ]
    judged = _judged(gate_vote(runs), f"open (>= {GATE_OPEN:g})", f"shut (< {GATE_SHUT:g})")
    return f"|tanh(gate)| at the end of training {', '.join(parts)}: {judged}"


def _judged(vote: bool | None, read: str, unread: str) -> str:
    """A piece of evidence's judgement in words: ``read`` / ``unread`` describe its two thresholds."""
    return {True: read, False: unread}.get(vote, f"not decisive (read: {read}; not read: {unread})")


# --- rollout ablations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationChange:
    """How an evaluation with replaced memory differs from the arm's own, on their paired episodes."""

    label: str
    n_pairs: int
    outcome: int  # episodes whose success differs
    length: int  # episodes whose number of steps differs
    actions: int | None  # episodes whose actions differ (None: some record has no action digest)

    @property
    def changed(self) -> float:
        return self.outcome / self.n_pairs if self.n_pairs else 0.0

    def text(self, own: str) -> str:
        actions = f", actions on {self.actions}" if self.actions is not None else ""
        return (
            f"{self.label} changed the outcome of {self.outcome} of {self.n_pairs} paired episodes vs {own} "
            f"(length on {self.length}{actions})"
        )


def ablation_change(own: Iterable[Record], ablation: Iterable[Record], label: str) -> AblationChange:
    """Compare the records of an ablation with the arm's own on the (episode, training seed) pairs both have."""

    def by_key(records: Iterable[Record]) -> dict[tuple[Hashable, Hashable], Record]:
        return {(r["episode_id"], r.get("train_seed")): r for r in records}

    a, b = by_key(own), by_key(ablation)
    keys = a.keys() & b.keys()
    digests = all(a[k].get("action_digest") and b[k].get("action_digest") for k in keys)
    return AblationChange(
        label=label,
        n_pairs=len(keys),
        outcome=sum(bool(a[k]["success"]) != bool(b[k]["success"]) for k in keys),
        length=sum(a[k].get("steps") != b[k].get("steps") for k in keys),
        actions=sum(a[k]["action_digest"] != b[k]["action_digest"] for k in keys) if digests else None,
    )


def ablation_line(change: AblationChange, own: str) -> str:
    """What `wm eval` says after an ablation: whether it left every paired episode as the arm's own."""
    if change.n_pairs == 0:
        return f"{change.label}: no paired episodes of {own} (its own memory) to compare with"
    if change.outcome == change.length == 0 and not change.actions:
        same = "success, length and actions" if change.actions == 0 else "success and length"
        return (
            f"{change.label} equals {own} on every one of the {change.n_pairs} paired episodes ({same}): at "
            f"rollout the policy did not read its world memory"
        )
    return change.text(own)


def rollout_vote(changes: Sequence[AblationChange]) -> bool | None:
    changes = [c for c in changes if c.n_pairs]
    if not changes:
        return None
    if any(c.changed >= ROLLOUT_CHANGED for c in changes):
        return True
    if all(c.changed <= ROLLOUT_UNCHANGED and c.length / c.n_pairs < ROLLOUT_CHANGED for c in changes):
        return False
    return None


# --- offline interventions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineGap:
    """A `wm intervene` result: validation action loss under each mode relative to the predicted memory."""

    ratios: dict[str, float]

    @classmethod
    def load(cls, path: Path) -> OfflineGap:
        return cls({m: float(r) for m, r in json.loads(Path(path).read_text())["ratio_to_pred"].items()})

    @property
    def deviation(self) -> float | None:
        """The largest relative change of the loss over the content-free modes (None: none was run)."""
        values = [abs(r - 1.0) for m, r in self.ratios.items() if m in CONTENT_FREE_MODES]
        return max(values) if values else None


def offline_vote(gaps: Mapping[Hashable, OfflineGap | None]) -> bool | None:
    deviations = [g.deviation for g in gaps.values() if g is not None]
    if not deviations or len(deviations) < len(gaps) or None in deviations:
        return None
    if all(d >= OFFLINE_GAP for d in deviations):
        return True
    if all(d <= OFFLINE_FLAT for d in deviations):
        return False
    return None


def _offline_text(gaps: Mapping[Hashable, OfflineGap | None]) -> str:
    if not gaps or all(g is None for g in gaps.values()):
        return "no offline intervention (`wm intervene`)"
    parts = []
    for seed, g in gaps.items():
        if g is None or g.deviation is None:
            parts.append(f"none (seed {seed})")
        else:
            worst = max((m for m in g.ratios if m in CONTENT_FREE_MODES), key=lambda m: abs(g.ratios[m] - 1))
            parts.append(f"x{g.ratios[worst]:.3f} ({worst}, seed {seed})")
    judged = _judged(offline_vote(gaps), f"a gap (>= {OFFLINE_GAP:.0%})", f"flat (within {OFFLINE_FLAT:.0%})")
    return f"offline action loss without the memory's content {', '.join(parts)}: {judged}"


# --- the check ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadCheck:
    """Whether an arm read its world memory, with the evidence."""

    arm: str
    gate: dict[Hashable, GateRun | None] = field(default_factory=dict)  # training seed -> its gate
    ablations: list[AblationChange] = field(default_factory=list)
    offline: dict[Hashable, OfflineGap | None] = field(default_factory=dict)  # training seed -> `wm intervene`

    @property
    def votes(self) -> dict[str, bool | None]:
        return {
            "the gate": gate_vote(self.gate),
            "the rollout ablations": rollout_vote(self.ablations),
            "the offline interventions": offline_vote(self.offline),
        }

    @property
    def state(self) -> ReadState:
        return self._decide()[0]

    @property
    def reason(self) -> str:
        return self._decide()[1]

    def _decide(self) -> tuple[ReadState, str]:
        votes = self.votes
        read = [name for name, v in votes.items() if v is True]
        unread = [name for name, v in votes.items() if v is False]
        if read and unread:
            return ReadState.BORDERLINE, (
                f"conflicting: read according to {' and '.join(read)}, not read according to {' and '.join(unread)}"
            )
        rollout = votes["the rollout ablations"]
        if rollout is not None:
            return (ReadState.READ if rollout else ReadState.NOT_READ), ""
        if len(read) >= 2 or len(unread) >= 2:
            return (ReadState.READ if read else ReadState.NOT_READ), ""
        undecided = [name for name, v in votes.items() if v is None]
        return ReadState.BORDERLINE, f"too little evidence: nothing decisive from {', '.join(undecided)}"

    def evidence(self) -> str:
        own = self.arm
        rollout = (
            "; ".join(c.text(own) for c in self.ablations) if self.ablations else "no rollout ablation of its memory"
        )
        return f"{_gate_text(self.gate)}; {rollout}; {_offline_text(self.offline)}"

    def summary(self) -> str:
        """``<state>`` or ``borderline (<why>)``, for a table cell."""
        return f"{self.state} ({self.reason})" if self.reason else str(self.state)


def world_memory_verdict(
    comparison: ArmComparison, check: ReadCheck, alpha: float = 0.05, evidence: bool = True
) -> str:
    """The verdict on a world-memory arm (``comparison.arm_b``) against ``comparison.arm_a``, which says whether
    the arm read its memory and never calls an unread memory "no significant difference". ``evidence=False``
    refers to the read-check instead of repeating its evidence."""
    arm = comparison.arm_b
    evidence = f"evidence: {check.evidence()}" if evidence else "evidence: its read-check"
    if check.state is ReadState.NOT_READ:
        return (
            f"inconclusive: {arm} did not read its world memory ({evidence}); its success against "
            f"{comparison.arm_a}, {comparison_numbers(comparison, alpha)}, says nothing about world memory."
        )
    if check.state is ReadState.BORDERLINE:
        if not significant(comparison, alpha):
            return (
                f"inconclusive: whether {arm} read its world memory is unclear ({check.reason}; {evidence}); "
                f"against {comparison.arm_a}: {comparison_numbers(comparison, alpha)}."
            )
        return (
            f"{verdict(comparison, alpha)} Read-check borderline ({check.reason}; {evidence}): the difference may "
            "not come from reading the memory."
        )
    return f"{verdict(comparison, alpha)} {arm} read its world memory ({evidence})."
