"""The matrix config: the YAML schema (see `world_modality.matrix`) parsed into typed dataclasses.

Every value is checked against the type annotation of the field it fills (the dataclasses below, `TrainOptions`,
the policy family's config, the simulator's dataset generator, `compute_latents`), so an error names the field and
what it expects before anything runs.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import yaml

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.families import (
    BACKBONE_FIELDS,
    FAMILY_OF_TYPE,
    FOLDER_FAMILIES,
    PolicyFamily,
    backbone_fields,
    check_backbone,
    folder_model_type,
    policy_family,
)
from lerobot_policy_world_modality.memory_modes import INTERVENTION_MODES, ROLLOUT_MODES
from world_modality.choices import EVAL, Count, NonNegative, bounds
from world_modality.report.arms import ArmFacts, arm_kind, resolve_baselines, training_memory
from world_modality.sim import DEFAULT_SIMULATOR

if TYPE_CHECKING:
    from lerobot.configs import PreTrainedConfig

CONFIG_FILE = "matrix.yaml"
# Marks a folder of results exported by `wm report --export`: no checkpoints, so `wm matrix` must not run in it.
RESULTS_ONLY_FILE = "RESULTS_ONLY"
SECTIONS = (
    "dataset",
    "encoders",
    "encoder",
    "backbones",
    "training",
    "arms",
    "ablations",
    "interventions",
    "evaluation",
    "report",
)
# TrainOptions fields the matrix sets itself (policy-config fields the run sets are `POLICY_SET_BY_RUN`).
MATRIX_OWNED = ("dataset", "latents", "out", "seed", "resume")
ARM_ENCODER = "encoder"  # the arm (or training) field naming the encoder whose latents the arm reads
ARM_BACKBONE = "backbone"  # the arm (or training) field naming the `backbones:` entry a VLA-family arm reads
BACKBONES_DIR = "backbones"  # RUN_DIR/backbones/<name>: the random backbone folders a matrix writes


class MatrixConfigError(InputError):
    """An invalid matrix config; the message names the field."""


@dataclass
class EvaluationConfig:
    """Where and how every arm is evaluated; all arms and ablations run the same episode list."""

    env: str = DEFAULT_SIMULATOR
    suite: str | None = None  # LIBERO only
    tasks: str | list[str | int] | None = None  # resolved to a list (MetaWorld: default the dataset's tasks;
    # LIBERO: task names or ids in the suite)
    episodes_per_task: Count = EVAL.episodes_per_task
    eval_seed: NonNegative = EVAL.eval_seed
    workers: Count = EVAL.workers
    groups: Count = EVAL.groups
    videos_per_task: NonNegative = EVAL.videos_per_task
    max_steps: Count | None = EVAL.max_steps
    # Train the next arm or seed while the CPUs evaluate finished checkpoints (`world_modality.schedule`'s local
    # executor); None: when a GPU is present. Results are the same either way.
    concurrent: bool | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """A VLA family's backbone: a local Hugging Face folder (``path``: real weights), or a random-initialised folder of
    ``model_type`` and ``size`` that the matrix writes into RUN_DIR/backbones/<name> (`write_random_backbone`)."""

    name: str
    model_type: str  # the folder's config.json model_type (smolvlm, qwen3_vl, qwen2_5_vl)
    path: str | None = None
    size: str | None = None

    @property
    def family(self) -> str:
        return FOLDER_FAMILIES[self.model_type]

    @property
    def label(self) -> str:
        """The backbone as a policy family names it: its folder's name."""
        return Path(self.path).name if self.path else self.name

    def folder(self, run_dir: Path) -> Path:
        return Path(self.path) if self.path else run_dir / BACKBONES_DIR / self.name

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path} if self.path else {"write": self.model_type, "size": self.size}


@dataclass
class ReportConfig:
    baseline: str | None = None  # the arm every other arm is compared with (default: `resolve_baselines`)


@dataclass(frozen=True)
class ArmSpec:
    """One arm of the matrix, parsed and validated once (`parse_config`) and passed on as it is.

    ``options`` are the TrainOptions keywords the arm (or the training section) sets, its policy-config fields under
    ``policy``; ``policy_config`` is its policy family's config of those fields, built when the file is read (the
    fields `build_config` fills from the data at their defaults), which answers what the arm is: its model, whether it
    has a world module, its memory modes. ``ablations`` and ``interventions`` are the memory modes its rollouts and
    `wm intervene` run besides its own."""

    name: str
    policy_type: str
    options: dict[str, Any]
    policy_config: PreTrainedConfig = field(repr=False)
    encoder: str  # the encoder whose latents the arm reads
    backbone: BackboneSpec | None = None  # a VLA family's `backbones:` entry (None: none, or its own policy fields)
    ablations: tuple[str, ...] = ()
    interventions: tuple[str, ...] = ()

    def setting(self, name: str) -> Any:
        """A TrainOptions field as the arm trains with it: its own value, else TrainOptions' default."""
        return self.options.get(name, train_defaults()[name])

    @property
    def model_type(self) -> str | None:
        """The world transformer's model (A, B, B_cont, C, F); None for the other families."""
        return getattr(self.policy_config, "model_type", None) if self.policy_type == "world_transformer" else None

    @property
    def model(self) -> str:
        """What the arm trains, in a few words: ``model F``, or its policy type."""
        return f"model {self.model_type}" if self.model_type is not None else self.policy_type

    @property
    def rollout_mode(self) -> str | None:
        """The arm's own rollout memory mode (None without a world module)."""
        return self.policy_config.world_memory_mode_rollout if self.policy_config.uses_world_module else None

    @property
    def facts(self) -> ArmFacts:
        """What the report needs to know of the arm: its kind, world source, training memory and policy family."""
        config = self.policy_config
        memory = None
        if self.rollout_mode is not None:
            memory = training_memory(config.memory_source, config.world_memory_mode_train)
        family = policy_family(self.policy_type, vars(config))
        if self.backbone is not None:
            family = PolicyFamily(family.name, self.backbone.label)
        return ArmFacts(self.name, arm_kind(self.rollout_mode), self.encoder, memory, family)

    def train_options(self, run_dir: Path) -> dict[str, Any]:
        """The arm's TrainOptions keywords, its backbone's folder (in ``run_dir`` when the matrix writes it) set in its
        policy config."""
        options = dict(self.options)
        if self.backbone is not None:
            folder = backbone_fields(self.backbone.family, self.backbone.folder(run_dir))
            options["policy"] = options.get("policy", {}) | folder
        return options

    def to_dict(self) -> dict[str, Any]:
        """The arm as a matrix file gives it (its ablations and interventions have sections of their own)."""
        return {**self.options, ARM_ENCODER: self.encoder} | (
            {ARM_BACKBONE: self.backbone.name} if self.backbone is not None else {}
        )


@dataclass
class MatrixConfig:
    """A validated matrix config (build one with `parse_config` or `load_config`)."""

    dataset: dict[str, Any]  # {"path": str} or {<simulator name>: keywords of its dataset generator}
    encoders: dict[str, dict[str, Any]]  # name -> other compute_latents keywords; the first is the default
    seeds: tuple[int, ...]  # the training seeds of every arm (arms are compared per seed)
    arms: dict[str, ArmSpec]
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    backbones: dict[str, BackboneSpec] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data; `parse_config` of it gives an equal config."""
        return {
            "dataset": self.dataset,
            "encoders": [{"name": name, **options} for name, options in self.encoders.items()],
            "training": {"seeds": list(self.seeds)},
            "arms": {name: arm.to_dict() for name, arm in self.arms.items()},
            "ablations": {name: list(modes) for name, modes in self.ablations.items()},
            "interventions": {name: list(modes) for name, modes in self.interventions.items()},
            "evaluation": dataclasses.asdict(self.evaluation),
            "report": dataclasses.asdict(self.report),
        } | ({"backbones": {name: spec.to_dict() for name, spec in self.backbones.items()}} if self.backbones else {})

    @property
    def ablations(self) -> dict[str, tuple[str, ...]]:
        """arm -> the rollout memory modes evaluated besides its own, for the arms that have some."""
        return {name: arm.ablations for name, arm in self.arms.items() if arm.ablations}

    @property
    def interventions(self) -> dict[str, tuple[str, ...]]:
        """arm -> its `wm intervene` modes, for the arms that have some."""
        return {name: arm.interventions for name, arm in self.arms.items() if arm.interventions}

    def piece(self, arms: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> MatrixConfig:
        """The part of this matrix with only ``arms`` and ``seeds`` (None: all): their ablations, interventions and
        the encoders they read; a run of it merges with runs of the other pieces (one run folder, or exports).
        The report's baseline stays only if the piece holds it."""
        for given, held, what in ((arms, self.arms, "arm"), (seeds, self.seeds, "training seed")):
            unknown = [x for x in given or () if x not in held]
            if unknown:
                raise MatrixConfigError(
                    f"no {what} {', '.join(map(str, unknown))} in this matrix (it has {', '.join(map(str, held))})"
                )
        if (arms is not None and not arms) or (seeds is not None and not seeds):
            raise MatrixConfigError("a piece needs at least one arm and one training seed")
        kept = {name: arm for name, arm in self.arms.items() if arms is None or name in arms}
        read = {arm.encoder for arm in kept.values()}
        backbones = {arm.backbone.name for arm in kept.values() if arm.backbone is not None}
        baseline = self.report.baseline if self.report.baseline in kept else None
        return dataclasses.replace(
            self,
            encoders={name: options for name, options in self.encoders.items() if name in read},
            backbones={name: spec for name, spec in self.backbones.items() if name in backbones},
            seeds=tuple(seed for seed in self.seeds if seeds is None or seed in seeds),
            arms=kept,
            report=dataclasses.replace(self.report, baseline=baseline),
        )

    def evaluations(self) -> list[tuple[str, str | None, str]]:
        """(arm, memory_mode, label) of every evaluation: the arm's own mode (None), then its ablations."""
        out: list[tuple[str, str | None, str]] = []
        for name, arm in self.arms.items():
            out.append((name, None, name))
            out += [(name, mode, f"{name}:{mode}") for mode in arm.ablations if mode != arm.rollout_mode]
        return out


# --- loading -----------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> MatrixConfig:
    """Read and validate a YAML matrix config."""
    path = Path(path).expanduser()
    return parse_config(read_yaml(path), base_dir=path.parent)


def read_yaml(path: Path) -> Any:
    """A matrix file's content. A key given twice in one mapping, at any depth, is an error naming it, its lines and
    the file: YAML keeps the last silently, so e.g. the first of two arms of one name would never run."""
    try:
        loader = yaml.SafeLoader(path.read_text())
        try:
            node = loader.get_single_node()
            if node is not None:
                _refuse_duplicate_keys(node, path, "", set())
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise MatrixConfigError(f"{path} is not valid YAML: {e}") from None


def _refuse_duplicate_keys(node: yaml.Node, path: Path, where: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                _refuse_duplicate_keys(value, path, where, seen)  # `<<: *anchor`: keys given beside it override its own
                continue
            name = key.value
            if (key.tag, name) in first:
                raise MatrixConfigError(
                    f"{path}:{key.start_mark.line + 1}: key {name!r} is given twice in {where or 'the top level'} (first "
                    f"on line {first[key.tag, name].start_mark.line + 1}); YAML would keep only the last and drop the "
                    "other silently. Remove one, or rename it (e.g. two arms need two names)."
                )
            first[key.tag, name] = key
            _refuse_duplicate_keys(value, path, f"{where}.{name}" if where else name, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{where}[{i}]", seen)


def report_baseline(run_dir: str | Path) -> str | None:
    """The baseline a matrix run folder's config names (``report.baseline``), without validating the rest."""
    path = Path(run_dir) / CONFIG_FILE
    raw = read_yaml(path) if path.is_file() else None
    return ((raw or {}).get("report") or {}).get("baseline")


def parse_config(raw: Any, base_dir: Path | None = None) -> MatrixConfig:
    """Validate a config mapping (see the module docstring); relative dataset paths are taken from ``base_dir``."""
    top = _mapping(raw, "config")
    _known(top, SECTIONS, "config")
    for name in ("dataset", "arms"):
        if name not in top:
            raise MatrixConfigError(f"config: missing section {name!r} (sections: {', '.join(SECTIONS)})")
    dataset = _dataset(_mapping(top["dataset"], "dataset"), base_dir)
    encoders = _encoders(top)
    backbones = _backbones(_mapping(top.get("backbones") or {}, "backbones"), base_dir)
    training = dict(_mapping(top.get("training") or {}, "training"))
    seeds = _seeds(training.pop("seeds", [0]))
    default_encoder = _arm_encoder(training, next(iter(encoders)), encoders, "training")
    default_backbone = training.pop(ARM_BACKBONE, None)
    defaults = _train_fields(training, "training")
    arms_raw = _mapping(top["arms"], "arms")
    if not arms_raw:
        raise MatrixConfigError("arms: name at least one arm, e.g. E0: {model_type: A}")
    arms = {}
    for name, given in arms_raw.items():
        if not isinstance(name, str) or not name or ":" in name or "/" in name:
            raise MatrixConfigError(f"arms: arm names must be non-empty strings without ':' or '/', got {name!r}")
        where = f"arms.{name}"
        given = dict(_mapping(given or {}, where))
        encoder = _arm_encoder(given, default_encoder, encoders, where)
        backbone = given.pop(ARM_BACKBONE, None)
        own = _train_fields(given, where)
        policy = {**defaults.get("policy", {}), **own.get("policy", {})}
        options = {**defaults, **own} | ({"policy": policy} if policy else {})
        policy_type = _policy_type(options)
        policy_config = _policy_config(policy_type, options, where)
        arms[name] = ArmSpec(
            name,
            policy_type,
            options,
            policy_config,
            encoder,
            _arm_backbone(policy_type, policy_config, backbone, default_backbone, backbones, base_dir, where),
        )
    ablations = _memory_modes(top, "ablations", arms, ROLLOUT_MODES, "rollout ablations")
    interventions = _memory_modes(top, "interventions", arms, INTERVENTION_MODES, "offline interventions")
    arms = {
        name: dataclasses.replace(arm, ablations=ablations.get(name, ()), interventions=interventions.get(name, ()))
        for name, arm in arms.items()
    }
    config = MatrixConfig(dataset, encoders, seeds, arms, backbones=backbones)
    _check_cameras(config)
    config.evaluation = _evaluation(_mapping(top.get("evaluation") or {}, "evaluation"), dataset)
    config.report = _typed(ReportConfig, _mapping(top.get("report") or {}, "report"), "report")
    try:
        resolve_baselines([arm.facts for arm in config.arms.values()], config.report.baseline)
    except ValueError as e:
        raise MatrixConfigError(f"report.baseline: {e}") from None
    return config


# --- typed values ------------------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MatrixConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _known(given: Mapping[str, Any], valid: Collection[str], where: str) -> None:
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise MatrixConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {', '.join(valid)}")


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed YAML) fits the type annotation ``hint``; hints this does not know accept it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Annotated:  # a range (`world_modality.choices.AtLeast`) on its type
        return _matches(value, args[0]) and not any(bound.problem(value) for bound in bounds(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if container in _MAPPINGS or dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return isinstance(value, (str, PurePath))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return value in {m.value for m in hint} or isinstance(value, hint)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _expected(hint: Any) -> str:
    """``hint`` in words, for an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return " ".join([_expected(args[0]), *(f">= {bound.low}" for bound in bounds(hint))])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_expected(a) for a in args))
    if origin is typing.Literal or (isinstance(hint, type) and issubclass(hint, Enum)):
        return "one of " + ", ".join(str(getattr(a, "value", a)) for a in (args or list(hint)))
    words = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    if (origin or hint) in _SEQUENCES:
        return "a list"
    if (origin or hint) in _MAPPINGS or dataclasses.is_dataclass(hint):
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path"
    return f"a {getattr(hint, '__name__', hint)}"


def _check(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint``; a dataclass-typed value (a mapping) has its own fields checked."""
    if not _matches(value, hint):
        raise MatrixConfigError(f"{where}: expected {_expected(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return _typed_fields(typing.get_type_hints(hint, include_extras=True), value, where)
    return value


def _typed_fields(hints: Mapping[str, Any], section: Mapping[str, Any], where: str) -> dict[str, Any]:
    _known(section, hints, where)
    return {name: _check(f"{where}.{name}", value, hints[name]) for name, value in section.items()}


def _typed(cls: type, section: Mapping[str, Any], where: str) -> Any:
    """A dataclass from a config section: unknown fields and values of the wrong type are errors."""
    return cls(**_typed_fields(typing.get_type_hints(cls, include_extras=True), section, where))


def _keyword_hints(fn: Callable[..., Any], exclude: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """A function's keyword annotations (all but ``exclude``) and its required parameters."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in exclude}
    return {n: hints.get(n, Any) for n in params}, [
        n for n, p in params.items() if p.default is inspect.Parameter.empty
    ]


def _dataclass_hints(cls: type, exclude: Collection[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in exclude}


# --- sections ----------------------------------------------------------------------------------------------


def _dataset(section: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    from world_modality.sim import SIMULATOR_NAMES, get_simulator

    _known(section, ("path", *SIMULATOR_NAMES), "dataset")
    if len(section) != 1:
        raise MatrixConfigError(
            "dataset: give exactly one of 'path' (an existing dataset) and a simulator "
            f"({', '.join(SIMULATOR_NAMES)}: generate one)"
        )
    if "path" in section:
        path = Path(_check("dataset.path", section["path"], str | Path)).expanduser()
        path = (base_dir / path if base_dir and not path.is_absolute() else path).resolve()
        if not (path / "meta" / "info.json").is_file():
            raise MatrixConfigError(f"dataset.path: {path} is not a LeRobot dataset (no meta/info.json)")
        return {"path": str(path)}
    ((name, given),) = section.items()
    simulator = get_simulator(name)
    where = f"dataset.{name}"
    hints, required = _keyword_hints(simulator.dataset_generator, ("out", "overwrite"))
    options = _typed_fields(hints, _mapping(given, where), where)
    missing = [field_name for field_name in required if field_name not in options]
    if missing:
        raise MatrixConfigError(f"{where}: missing field {missing[0]!r}")
    if "tasks" in options:
        options["tasks"] = _tasks(options["tasks"], f"{where}.tasks", simulator.parse_tasks)
    if "cameras" in options:
        options["cameras"] = list(options["cameras"])
    return {name: options}


def generated_dataset(dataset: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(simulator name, generator options) of a dataset section that generates its data; None for ``path``."""
    return None if "path" in dataset else next(iter(dataset.items()))


def _tasks(value: Any, where: str, resolve: Callable[[Any], list[str]]) -> list[str]:
    if not isinstance(value, (str, list)):
        raise MatrixConfigError(f"{where}: expected task names (a string or a list), got {value!r}")
    try:
        return resolve(value)
    except ValueError as e:
        raise MatrixConfigError(f"{where}: {e}") from None


def _encoders(top: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``encoders:`` (a list) or the single ``encoder:`` of older matrix files -> name -> options."""
    if "encoders" in top and "encoder" in top:
        raise MatrixConfigError(
            "config: give 'encoders' (a list of world encoders) or the older 'encoder' (one encoder), not both"
        )
    if "encoders" in top:
        sections = top["encoders"]
        if not isinstance(sections, list) or not sections:
            raise MatrixConfigError(
                f"encoders: expected a non-empty list of encoders, e.g. [{{name: learned}}, "
                f"{{name: state}}], got {sections!r}"
            )
        wheres = [f"encoders[{i}]" for i in range(len(sections))]
    elif "encoder" in top:
        sections, wheres = [top["encoder"]], ["encoder"]
    else:
        raise MatrixConfigError(f"config: missing section 'encoders' (sections: {', '.join(SECTIONS)})")
    out: dict[str, dict[str, Any]] = {}
    for section, where in zip(sections, wheres):
        name, options = _encoder(_mapping(section, where), where)
        if name in out:
            raise MatrixConfigError(
                f"{where}.name: encoder {name!r} is listed twice; an arm names its encoder "
                "by name, so each may appear once (compare two settings in two run folders)"
            )
        out[name] = options
    return out


def _encoder(section: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    from lerobot_policy_world_modality.encoders.spec import ENCODER_NAMES
    from world_modality.latents import compute_latents

    hints, _ = _keyword_hints(compute_latents, ("dataset", "encoder_name", "out", "progress"))
    options = _typed_fields({"name": str} | hints, section, where)
    if options.get("name") not in ENCODER_NAMES:
        raise MatrixConfigError(
            f"{where}.name: expected one of {', '.join(ENCODER_NAMES)}, got {options.get('name')!r}"
        )
    return options.pop("name"), options


def _arm_encoder(options: dict[str, Any], default: str, encoders: Mapping[str, Any], where: str) -> str:
    """Pop the encoder an arm (or every arm: ``training``) reads, checking that it is listed."""
    name = options.pop(ARM_ENCODER, default)
    if name not in encoders:
        raise MatrixConfigError(
            f"{where}.{ARM_ENCODER}: no encoder {name!r} in 'encoders' (listed: {', '.join(encoders)})"
        )
    return name


def _backbones(section: Mapping[str, Any], base_dir: Path | None) -> dict[str, BackboneSpec]:
    """``backbones:`` name -> {path: DIR} (a local folder, e.g. real weights) or {write: MODEL_TYPE, size: SIZE} (a
    random-initialised folder the matrix writes)."""
    from world_modality.model_folders import RANDOM_BACKBONES

    out = {}
    for name, entry in section.items():
        where = f"backbones.{name}"
        if not isinstance(name, str) or not name or "/" in name:
            raise MatrixConfigError(f"backbones: names must be non-empty strings without '/', got {name!r}")
        entry = _typed_fields({"path": str, "write": str, "size": str}, _mapping(entry, where), where)
        if "path" in entry:
            if set(entry) != {"path"}:
                raise MatrixConfigError(
                    f"{where}: give either path (a local backbone folder) or write and size (a "
                    "random backbone the matrix writes), not both"
                )
            path = Path(entry["path"]).expanduser()
            path = (base_dir / path if base_dir and not path.is_absolute() else path).resolve()
            try:
                model_type = folder_model_type(path)
            except FileNotFoundError as e:
                raise MatrixConfigError(f"{where}.path: {e}") from None
            if model_type not in FOLDER_FAMILIES:
                raise MatrixConfigError(
                    f"{where}.path: {path} holds a {model_type!r} model, not a backbone of a VLA "
                    f"family (model types: {', '.join(FOLDER_FAMILIES)})"
                )
            out[name] = BackboneSpec(name, model_type, path=str(path))
        else:
            model_type, size = entry.get("write"), entry.get("size")
            if size not in RANDOM_BACKBONES.get(model_type, ()):
                known = "; ".join(f"write: {t}, size: {' | '.join(sizes)}" for t, sizes in RANDOM_BACKBONES.items())
                raise MatrixConfigError(
                    f"{where}: expected path: DIR, or a random backbone ({known}); got {dict(entry)}"
                )
            out[name] = BackboneSpec(name, model_type, size=size)
    return out


def _arm_backbone(
    policy_type: str,
    policy_config: PreTrainedConfig,
    name: str | None,
    default: str | None,
    backbones: Mapping[str, BackboneSpec],
    base_dir: Path | None,
    where: str,
) -> BackboneSpec | None:
    """The `backbones:` entry a VLA-family arm reads: its own ``name``, else the training section's ``default`` (None:
    the folder its policy config names, which must exist and be of its family); refuses a backbone of another
    family, or one named for an arm of a family without backbones (`check_backbone`)."""
    family = FAMILY_OF_TYPE[policy_type]
    if family not in BACKBONE_FIELDS:
        if name is not None:
            raise MatrixConfigError(f"{where}.{ARM_BACKBONE}: a {policy_type} policy has no backbone")
        return None
    name = name if name is not None else default
    if name is not None:
        if name not in backbones:
            raise MatrixConfigError(
                f"{where}.{ARM_BACKBONE}: no backbone {name!r} in 'backbones' "
                f"(listed: {', '.join(backbones) or 'none'})"
            )
        if backbones[name].family != family:
            raise MatrixConfigError(
                f"{where}.{ARM_BACKBONE}: {name} is a {backbones[name].model_type} folder, a "
                f"backbone of the {backbones[name].family} family; a {policy_type} arm reads a "
                f"{' or '.join(t for t, f in FOLDER_FAMILIES.items() if f == family)} backbone"
            )
        return backbones[name]
    field_name = BACKBONE_FIELDS[family][0]
    folder = getattr(policy_config, field_name)
    if folder is None:
        raise MatrixConfigError(
            f"{where}: a {policy_type} arm reads a backbone: name a `backbones:` entry with "
            f"{ARM_BACKBONE}: NAME (or set {field_name} to a local folder)"
        )
    path = Path(folder).expanduser()
    if base_dir and not path.is_absolute() and (base_dir / path).exists():
        folder = str(base_dir / path)  # a folder named relative to the matrix file
    try:
        check_backbone(family, folder, f"{where}.{field_name}")
    except FileNotFoundError as e:
        raise MatrixConfigError(
            f"{e} (or name a `backbones:` entry with {ARM_BACKBONE}: NAME, e.g. a random `small` one to train "
            "from scratch)"
        ) from None
    except InputError as e:
        raise MatrixConfigError(str(e)) from None
    return None


def _check_cameras(config: MatrixConfig) -> None:
    """Refuse an arm that reads a camera the dataset (given by path) lacks: its keys' image or wrist camera, or its
    encoder's camera (each side of a side-by-side one)."""
    from lerobot_policy_world_modality.dataset_files import dataset_info
    from lerobot_policy_world_modality.encoders.spec import camera_parts
    from world_modality.data.check import CAMERA_DTYPES

    if "path" not in config.dataset:
        return  # a generated dataset renders the cameras its generator is given
    read: dict[str, tuple[str, str]] = {}  # where -> (arm, camera key)
    for name, arm in config.arms.items():
        keys = arm.options.get("keys") or {}  # the dataset keys the arm names (the others: DatasetKeys' defaults)
        read |= {f"arms.{name}.keys.{role}": (name, keys[role]) for role in ("image", "wrist") if keys.get(role)}
        encoder_camera = config.encoders[arm.encoder].get("camera_key")
        if encoder_camera:
            read |= {f"encoders.{arm.encoder}.camera_key": (name, key) for key in camera_parts(encoder_camera)}
    if not read:
        return
    features = dataset_info(Path(config.dataset["path"])).get("features", {})
    cameras = [key for key, feature in features.items() if feature.get("dtype") in CAMERA_DTYPES]
    for where, (arm, key) in read.items():
        if key not in cameras:
            raise MatrixConfigError(
                f"{where}: arm {arm} reads the camera {key!r}, which the dataset "
                f"{config.dataset['path']} does not have (its cameras: {', '.join(cameras) or 'none'})"
            )


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in value)
    ):
        raise MatrixConfigError(f"training.seeds: expected a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise MatrixConfigError(f"training.seeds: repeated seed in {value}")
    return tuple(value)


@cache
def _train_hints() -> dict[str, Any]:
    from world_modality.training.options import TrainOptions

    return _dataclass_hints(TrainOptions, MATRIX_OWNED)


@cache
def train_defaults() -> dict[str, Any]:
    """TrainOptions' defaults of the fields an arm may set."""
    from world_modality.training.options import TrainOptions

    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else None)
        for f in dataclasses.fields(TrainOptions)
        if f.name not in MATRIX_OWNED
    }


@cache
def _policy_fields(policy_type: str) -> tuple[type, tuple[str, ...]]:
    """The policy family's config class and its own settable fields (not LeRobot's base-class ones, not those
    the run sets from its options and data)."""
    from lerobot.configs import PreTrainedConfig

    from world_modality.training.options import POLICY_SET_BY_RUN
    from world_modality.training.trainer import policy_config_class

    config_class = policy_config_class(policy_type)
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    names = tuple(
        f.name for f in dataclasses.fields(config_class) if f.name not in base and f.name not in POLICY_SET_BY_RUN
    )
    return config_class, names


def _policy_type(options: Mapping[str, Any]) -> str:
    """The policy type of an arm's (or the training section's) TrainOptions keywords: its own, else TrainOptions'."""
    return options.get("policy_type", train_defaults()["policy_type"])


def _policy_config(policy_type: str, options: Mapping[str, Any], where: str) -> PreTrainedConfig:
    """The arm's policy config: its family's config class built from the arm's fields (those `build_config` fills from
    the data left at their defaults), so a combination the family refuses is refused before anything runs."""
    config_class, _ = _policy_fields(policy_type)
    fields = dict(options.get("policy", {}))
    if "wrist_key" in {f.name for f in dataclasses.fields(config_class)}:  # a VLM family reads the keys' wrist camera
        fields = {"wrist_key": (options.get("keys") or {}).get("wrist")} | fields
    if policy_type == "world_transformer":
        if options.get("model_type") is not None:
            fields["model_type"] = options["model_type"]
        if options.get("tokens") is not None:  # models B and C read their codebook there
            fields.setdefault("tokens_path", options["tokens"])
    elif options.get("model_type") is not None:
        raise MatrixConfigError(f"{where}.model_type: applies to world_transformer arms only, not {policy_type}")
    try:
        return config_class(**fields, device="cpu")  # a device of its own: LeRobot would look for an accelerator
    except (ValueError, NotImplementedError) as e:
        raise MatrixConfigError(f"{where}: {e}") from None


@cache
def _policy_hints(policy_type: str) -> dict[str, Any]:
    config_class, names = _policy_fields(policy_type)
    hints = typing.get_type_hints(config_class, include_extras=True)
    return {n: hints[n] for n in names}


def _train_fields(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TrainOptions keywords from an arm (or the training defaults); policy-config fields go into ``policy``."""
    from lerobot_policy_world_modality import POLICY_TYPES
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import MODEL_TYPES

    train = _train_hints()
    policy_type = _policy_type(options)
    if policy_type not in POLICY_TYPES:
        raise MatrixConfigError(f"{where}.policy_type: expected one of {', '.join(POLICY_TYPES)}, got {policy_type!r}")
    policy_fields = _policy_hints(policy_type)
    unknown = [k for k in options if k not in train and k not in policy_fields]
    if unknown:
        raise MatrixConfigError(
            f"{where}: unknown field(s) {unknown}; valid: TrainOptions fields {', '.join(train)} "
            f"(the matrix sets {', '.join(MATRIX_OWNED)}), {ARM_ENCODER} (the world source the arm reads), "
            f"and policy config fields {', '.join(policy_fields)}"
        )
    out = {
        name: _check(f"{where}.{name}", value, train[name])
        for name, value in options.items()
        if name in train and name != "policy"
    }
    policy = dict(_mapping(options.get("policy") or {}, f"{where}.policy"))
    beside = {name: value for name, value in options.items() if name not in train}
    both = [name for name in beside if name in policy and policy[name] != beside[name]]
    if both:
        raise MatrixConfigError(
            f"{where}.{both[0]}: given as {beside[both[0]]!r} and under policy as {policy[both[0]]!r}; give it once"
        )
    policy |= beside
    policy = _typed_fields(policy_fields, policy, f"{where}.policy")
    if "model_type" in out and out["model_type"] not in MODEL_TYPES:
        raise MatrixConfigError(
            f"{where}.model_type: expected one of {', '.join(MODEL_TYPES)}, got {out['model_type']!r}"
        )
    if policy:
        out["policy"] = policy
    return out


def _memory_modes(
    top: Mapping[str, Any], name: str, arms: Mapping[str, ArmSpec], valid: tuple[str, ...], what: str
) -> dict[str, tuple[str, ...]]:
    """``arm -> memory modes`` of the ablations or interventions section: only arms with world memory."""
    out = {}
    for arm, modes in _mapping(top.get(name) or {}, name).items():
        where = f"{name}.{arm}"
        if arm not in arms:
            raise MatrixConfigError(f"{where}: no arm {arm!r} (arms: {', '.join(arms)})")
        if arms[arm].rollout_mode is None:
            raise MatrixConfigError(
                f"{where}: arm {arm!r} has no world memory ({arms[arm].model}); {what} need a world-memory arm"
            )
        if not isinstance(modes, list) or any(m not in valid for m in modes):
            raise MatrixConfigError(f"{where}: expected a list of memory modes from {', '.join(valid)}, got {modes!r}")
        out[arm] = tuple(dict.fromkeys(modes))
    return out


def _evaluation(section: Mapping[str, Any], dataset: Mapping[str, Any]) -> EvaluationConfig:
    from world_modality.sim import SIMULATOR_NAMES, get_simulator

    ev = _typed(EvaluationConfig, section, "evaluation")  # ranges included (`world_modality.choices.Count`)
    if ev.env not in SIMULATOR_NAMES:
        raise MatrixConfigError(f"evaluation.env: expected one of {', '.join(SIMULATOR_NAMES)}, got {ev.env!r}")
    simulator = get_simulator(ev.env)
    try:
        simulator.check_suite(ev.suite)
    except ValueError as e:
        raise MatrixConfigError(f"evaluation.suite: {e}") from None
    if ev.tasks is not None:
        ev.tasks = _tasks(ev.tasks, "evaluation.tasks", simulator.parse_tasks)
        return ev
    generated = generated_dataset(dataset)
    if generated is not None and generated[0] == ev.env and "tasks" in generated[1]:
        ev.tasks = list(generated[1]["tasks"])
    elif generated is None:
        # The tasks the dataset holds demos of: those its policies were trained on.
        try:
            ev.tasks = simulator.dataset_tasks(Path(dataset["path"]), ev.suite)
        except ValueError as e:
            raise MatrixConfigError(f"evaluation.tasks: {e}") from None
        if ev.tasks is None:
            raise MatrixConfigError(
                f"evaluation.tasks: the dataset {dataset['path']} does not say which {ev.env} tasks "
                "it holds; name the tasks to evaluate"
            )
    return ev
