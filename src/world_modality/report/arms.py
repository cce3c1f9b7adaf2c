"""What an arm is, whatever it is called: a baseline (no world memory), a control (a world module reading
memory without content) or a world-memory arm; the world source it reads; and the baseline it is compared with
(docs/ARCHITECTURE.md, Experiment matrix). The matrix uses this to check a config, the report to pair arms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.families import PolicyFamily
from lerobot_policy_world_modality.memory_modes import INTERVENTION_MODES, MemoryMode

# Rollout memory modes that carry none of the memory's content: an arm acting with one is a control (E1).
CONTENT_FREE_MODES = tuple(m for m in INTERVENTION_MODES if m != MemoryMode.ORACLE)
NO_MEMORY = "none"  # the rollout memory mode the runner records for a policy without a world module


class ArmKind(StrEnum):
    BASELINE = "baseline"  # no world module (model A, LeRobot's own SmolVLA, ...)
    CONTROL = "control"  # a world module whose own memory carries no content (E1: zero memory)
    WORLD = "world memory"  # reads predicted (or oracle) future world state


def arm_kind(own_rollout_mode: str | None) -> ArmKind:
    """The kind of an arm from the memory mode it acts with (None or "none": no world memory)."""
    if own_rollout_mode in (None, NO_MEMORY):
        return ArmKind.BASELINE
    return ArmKind.CONTROL if own_rollout_mode in CONTENT_FREE_MODES else ArmKind.WORLD


def training_memory(memory_source: str, train_mode: str) -> str:
    """What filled the memory in training: the memory source (predicted, oracle, scheduled) when it was read
    as `pred`, else the training memory mode (e.g. zero for E1)."""
    return memory_source if train_mode == MemoryMode.PRED else train_mode


@dataclass(frozen=True)
class ArmFacts:
    name: str
    kind: ArmKind
    world_source: str | None = None  # the encoder whose latents the arm reads (None: unknown)
    training_memory: str | None = None  # see `training_memory`; None for a baseline or when unknown
    family: PolicyFamily | None = None  # the policy family and backbone (None: unknown, as in older result files)

    def same_family(self, other: ArmFacts) -> bool:
        """Whether the two arms may be compared as arm and baseline or control: the same policy family on the same
        backbone (an arm of unknown family matches any)."""
        return self.family is None or other.family is None or self.family == other.family


def resolve_baselines(arms: Sequence[ArmFacts], baseline: str | None = None) -> dict[str, str | None]:
    """The baseline arm of every control and world-memory arm (None where the run has none).

    Only an arm of the same policy family on the same backbone is a baseline (`ArmFacts.same_family`). ``baseline``
    names it for every arm; without it, an arm's baseline is its family's one arm without world memory that reads
    the same world source, else its family's one arm without world memory. Raises ValueError when ``baseline`` is
    not an arm without world memory or is of another family than an arm, or when the choice is ambiguous."""
    baselines = [a for a in arms if a.kind is ArmKind.BASELINE]
    others = [a for a in arms if a.kind is not ArmKind.BASELINE]
    if baseline is not None:
        named = next((a for a in baselines if a.name == baseline), None)
        if named is None:
            kinds = ", ".join(f"{a.name} ({a.kind})" for a in arms)
            raise InputError(f"baseline {baseline!r} is not an arm without world memory (arms: {kinds})")
        foreign = [f"{a.name} ({a.family})" for a in others if not a.same_family(named)]
        if foreign:
            raise InputError(
                f"baseline {baseline!r} is a {named.family} arm, and {', '.join(foreign)} of another "
                "family or backbone: an arm is judged against the baseline of its own family on its own "
                "backbone. Leave the baseline unnamed (each arm then takes its own family's arm without "
                "world memory) or add such an arm"
            )
        return {a.name: baseline for a in others}
    out: dict[str, str | None] = {}
    for arm in others:
        family = [b for b in baselines if b.same_family(arm)]
        same_source = [b for b in family if arm.world_source is not None and b.world_source == arm.world_source]
        candidates = same_source or family
        if len(candidates) > 1:
            where = f" on world source {arm.world_source!r}" if same_source else ""
            raise InputError(
                f"the baseline of arm {arm.name!r} is ambiguous: {', '.join(b.name for b in candidates)} have no world "
                f"memory{where}. Name it in the matrix file (report: {{baseline: {candidates[0].name}}}) or with "
                f"`wm report --baseline {candidates[0].name}`"
            )
        out[arm.name] = candidates[0].name if candidates else None
    return out
