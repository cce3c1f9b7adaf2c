"""Running a matrix: the run folder's layout, the matrix's scheduling plan (each step done or to do from what
the folder holds) and running it on one of `world_modality.schedule`'s executors. See `world_modality.matrix`
for the layout and the config schema."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from world_modality.atomic_io import (
    atomic_write_json,
    atomic_write_text,
    commit_folder,
    output_folder,
    read_jsonl,
    temp_folder,
)
from world_modality.locks import writer_lock
from world_modality.matrix.config import (
    CONFIG_FILE,
    RESULTS_ONLY_FILE,
    ArmSpec,
    MatrixConfig,
    generated_dataset,
    load_config,
    parse_config,
    read_yaml,
)
from world_modality.matrix.profile import Profile, format_stage_times, stage_times
from world_modality.report.readcheck import ablation_change, ablation_line, gate_line, intervention_path, load_gate_run
from world_modality.schedule import (
    Plan,
    Resources,
    Step,
    StepDone,
    default_executor,
    eval_resources,
    execute,
    gpus_available,
    ray_session,
    train_resources,
)

EPISODES_FILE = "episodes.jsonl"
MATRIX_RUN_KIND = "matrix run"  # its folder's `atomic_io.OUTPUT_MARKER`
# Settings a rerun may change: they do not change any result (``name@section`` limits one to a section).
FREE_FIELDS = frozenset(
    {
        "workers",
        "groups",
        "videos_per_task",
        "device",
        "progress",
        "wandb",
        "log_every",
        "save_every",
        "val_batch_size",
        "batch_size@encoders",
        "chunk_episodes",
        "concurrent",
    }
)


# --- the run folder and its steps ------------------------------------------------------------------------


def episodes_per_evaluation(config: MatrixConfig) -> int:
    """How many episodes a finished evaluation of the matrix holds: every task x episodes_per_task."""
    return len(config.evaluation.tasks) * config.evaluation.episodes_per_task


def episodes_held(evaluation: Path) -> int:
    """How many distinct episodes evaluation folder ``evaluation`` (eval/<label>/seed<k>) holds."""
    return len({r.get("episode_id") for r in read_jsonl(evaluation / EPISODES_FILE)})


def dataset_dir(config: MatrixConfig, run_dir: Path) -> Path:
    return Path(config.dataset["path"]) if "path" in config.dataset else run_dir / "dataset"


def latents_dir(config: MatrixConfig, run_dir: Path, encoder: str | None = None) -> Path:
    """The latent cache of ``encoder`` (default: the first listed)."""
    return run_dir / "latents" / (encoder or next(iter(config.encoders)))


def train_dir(run_dir: Path, arm: str, seed: int) -> Path:
    return run_dir / "train" / arm / f"seed{seed}"


def eval_dir(run_dir: Path, label: str, seed: int) -> Path:
    return run_dir / "eval" / label / f"seed{seed}"


def generate_dataset(config: MatrixConfig, run_dir: Path) -> None:
    """Generate the simulator's expert dataset into RUN_DIR/dataset (resumable)."""
    from world_modality.sim import get_simulator

    name, options = generated_dataset(config.dataset)
    get_simulator(name).dataset_generator(dataset_dir(config, run_dir), **options)


def write_backbone(config: MatrixConfig, run_dir: Path, backbone: str) -> None:
    """Write a random-initialised backbone folder into RUN_DIR/backbones/<name> (the same files on every machine)."""
    from world_modality.model_folders import write_random_backbone

    spec = config.backbones[backbone]
    final = spec.folder(run_dir)
    tmp = temp_folder(final)
    write_random_backbone(spec.model_type, spec.size, tmp)
    commit_folder(tmp, final)


def compute_world_latents(config: MatrixConfig, run_dir: Path, encoder: str) -> None:
    """Cache the world latents of the dataset into RUN_DIR/latents/<encoder> (resumable)."""
    from world_modality.latents import compute_latents

    compute_latents(
        dataset_dir(config, run_dir), encoder, out=latents_dir(config, run_dir, encoder), **config.encoders[encoder]
    )


def train_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """Train (or resume training) one arm with one seed into RUN_DIR/train/<arm>/seed<k>; say whether its
    world gate opened."""
    from world_modality.data.check import DatasetKeys
    from world_modality.training.trainer import TrainOptions, train

    spec = config.arms[arm]
    options = spec.train_options(run_dir)
    if "keys" in options:
        options["keys"] = DatasetKeys(**options["keys"])
    out = train_dir(run_dir, arm, seed)
    train(
        TrainOptions(
            dataset=str(dataset_dir(config, run_dir)),
            latents=str(latents_dir(config, run_dir, spec.encoder)),
            out=str(out),
            seed=seed,
            resume=True,
            **options,
        )
    )
    print(f"{arm} seed {seed}: {gate_line(load_gate_run(out))}")


def intervene_arm(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """`wm intervene` of an arm's last checkpoint on its held-out episodes into RUN_DIR/intervene/<arm>/seed<k>.json."""
    from world_modality.devices import resolve_device
    from world_modality.training.intervene import format_table, intervene

    spec = config.arms[arm]
    result = intervene(
        train_dir(run_dir, arm, seed),
        dataset_dir(config, run_dir),
        latents_dir(config, run_dir, spec.encoder),
        list(spec.interventions),
        seed=seed,
        device=str(resolve_device(spec.setting("device"))),
        keys=spec.options.get("keys"),
    )
    print(format_table(result))
    atomic_write_json(intervention_path(run_dir, arm, seed), result)


def evaluate_arm(
    config: MatrixConfig,
    run_dir: Path,
    arm: str,
    seed: int,
    memory_mode: str | None,
    label: str,
    pools: Any = None,
    held: Path | None = None,
) -> None:
    """Evaluate the last checkpoint of an arm's seed (resumable) into RUN_DIR/eval/<label>/seed<k> on the started
    simulator ``pools`` (an `EnvPools`; None: its own); an ablation says whether it left every paired episode as
    the arm's own (read from ``held``, the export the plan took as done, when RUN_DIR lacks them)."""
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.training.checkpoint import last_checkpoint

    checkpoint = last_checkpoint(train_dir(run_dir, arm, seed))
    if checkpoint is None:
        raise MissingFileError(f"{train_dir(run_dir, arm, seed)} has no checkpoint to evaluate")
    ev = config.evaluation
    results = evaluate_checkpoint(
        checkpoint,
        env=ev.env,
        suite=ev.suite,
        tasks=ev.tasks,
        episodes_per_task=ev.episodes_per_task,
        memory_mode=memory_mode,
        arm=arm,
        train_seed=seed,
        out_dir=eval_dir(run_dir, label, seed),
        workers=ev.workers,
        groups=ev.groups,
        eval_seed=ev.eval_seed,
        videos_per_task=ev.videos_per_task,
        max_steps=ev.max_steps,
        pools=pools,
    )
    if label != arm:
        own_file = eval_dir(run_dir, arm, seed) / EPISODES_FILE
        if not own_file.is_file() and held is not None:
            own_file = eval_dir(held, arm, seed) / EPISODES_FILE
        if not own_file.is_file():
            # Reachable only outside the plan (which evaluates the arm before its ablations). `ablation_line` would
            # say only "no paired episodes"; name the file looked for and the remedy, as `wm eval` does.
            print(
                f"seed {seed}: {label} not compared with {arm}: no evaluation of {arm} at {own_file} "
                f"(evaluate {arm} first; the report pairs them once both exist)"
            )
            return
        own = read_jsonl(own_file)
        print(f"seed {seed}: {ablation_line(ablation_change(own, read_jsonl(results), label), arm)}")


def write_run_report(config: MatrixConfig, run_dir: Path) -> None:
    from world_modality.report import write_report

    write_report(run_dir, baseline=config.report.baseline)


def _intervention_done(path: Path, modes: tuple[str, ...], step: int) -> bool:
    if not path.is_file():
        return False
    result = json.loads(path.read_text())
    return result.get("training_step") == step and set(modes) <= set(result.get("ratio_to_pred", {}))


def train_step(config: MatrixConfig, run_dir: Path, arm: str, seed: int) -> None:
    """The plan's training step: `train_arm`, after discarding the evaluations and interventions of the arm's
    seed. They belong to its final checkpoint, and a training that runs (afresh after a lost checkpoint, or
    from an earlier one) makes a new one: its results would otherwise pass for the new checkpoint's."""
    stale = [eval_dir(run_dir, label, seed) for base, _, label in config.evaluations() if base == arm]
    for path in filter(Path.exists, [*stale, intervention_path(run_dir, arm, seed)]):
        print(f"{arm} seed {seed} is trained again: removing {path}, the results of an earlier checkpoint")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train_arm(config, run_dir, arm, seed)


def _on_gpu(device: str | None, gpus: bool) -> bool:
    """Whether a step run on ``device`` (a config's device option; default ``auto``) holds a GPU."""
    device = str(device or "auto")
    return device.startswith("cuda") or (device == "auto" and gpus)


def plan(
    config: MatrixConfig,
    run_dir: str | Path,
    gpus: bool | None = None,
    held: str | Path | None = None,
    trainings_per_gpu: int = 1,
) -> Plan:
    """Every step of the matrix in the serial order, each marked done or to do from what RUN_DIR holds, with the
    steps it needs and the resources it holds (``gpus``: whether GPUs are there to hold; default: this machine's).

    Training steps run in processes of their own (`world_modality.schedule`); an evaluation of a checkpoint whose
    training is to do is to do as well, so a lost checkpoint reruns its training, evaluations and the report.

    ``held``: an export (`wm matrix --export DEST`) whose finished evaluations and interventions are done too, so a
    run on a fresh machine does only what DEST lacks: a training only when one of its evaluations or interventions
    is left (its export then checks that the weights reproduce DEST's run), the dataset and latents only when a
    step to do needs them. ``trainings_per_gpu``: training runs that share one GPU (`train_resources`)."""
    from lerobot_policy_world_modality.latent_cache import SPEC_FILE
    from world_modality.sim import get_simulator
    from world_modality.training.checkpoint import last_checkpoint

    if gpus is None:
        gpus = gpus_available("serial")
    run_dir = Path(run_dir).expanduser().resolve()
    where = {"config": config, "run_dir": run_dir}
    steps: list[Step] = []
    data = dataset_dir(config, run_dir)
    generated = generated_dataset(config.dataset)
    dataset_needs: tuple[str, ...] = ()
    if generated is None:
        episodes = json.loads((data / "meta" / "info.json").read_text())["total_episodes"]
    else:
        name, options = generated
        what = ", ".join(f"{key} {value}" for key, value in options.items() if key in ("tasks", "episodes_per_task"))
        episodes = len(get_simulator(name).parse_tasks(options["tasks"])) * options["episodes_per_task"]
        steps.append(
            Step(
                "dataset",
                "dataset",
                generate_dataset,
                where,
                done=get_simulator(name).dataset_complete(data),
                resources=Resources(cpus=float(options.get("workers", 1))),
                detail=f"{name}: {what} -> {data}",
                work={"episodes": episodes},
            )
        )
        dataset_needs = ("dataset",)
    for encoder, options in config.encoders.items():
        latents = latents_dir(config, run_dir, encoder)
        steps.append(
            Step(
                f"latents {encoder}",
                "latents",
                compute_world_latents,
                where | {"encoder": encoder},
                needs=dataset_needs,
                done=(latents / SPEC_FILE).is_file(),
                isolated=True,
                resources=train_resources(_on_gpu(options.get("device"), gpus)),
                detail=f"-> {latents}",
                work={"episodes": episodes},
            )
        )
    for name, spec in config.backbones.items():
        if spec.path is None:
            folder = spec.folder(run_dir)
            steps.append(
                Step(
                    f"backbone {name}",
                    "backbone",
                    write_backbone,
                    where | {"backbone": name},
                    done=(folder / "config.json").is_file(),
                    detail=f"random {spec.model_type} {spec.size} -> {folder}",
                )
            )
    held = Path(held).expanduser().resolve() if held is not None else None
    ev = config.evaluation
    expected = episodes_per_evaluation(config)
    totals = {name: arm.setting("steps") for name, arm in config.arms.items()}
    evaluation_held = {
        (label, seed): held is not None and episodes_held(eval_dir(held, label, seed)) >= expected
        for _, _, label in config.evaluations()
        for seed in config.seeds
    }
    intervention_held = {
        (arm, seed): held is not None and _intervention_done(intervention_path(held, arm, seed), modes, totals[arm])
        for arm, modes in config.interventions.items()
        for seed in config.seeds
    }
    # A training is needed here only for results ``held`` lacks.
    needed = {
        (base, seed)
        for base, _, label in config.evaluations()
        for seed in config.seeds
        if not evaluation_held[label, seed]
    }
    needed |= {key for key, done in intervention_held.items() if not done}
    trained: dict[tuple[str, int], bool] = {}
    for arm, spec in config.arms.items():
        total = totals[arm]
        for seed in config.seeds:
            last = last_checkpoint(train_dir(run_dir, arm, seed))
            at = int(last.name) if last is not None else 0
            if at > total:
                raise InputError(
                    f"{train_dir(run_dir, arm, seed)} was trained to step {at}, beyond the {total} "
                    f"steps the config asks of arm {arm!r}; use another run folder"
                )
            trained[arm, seed] = at == total or (arm, seed) not in needed
            kind = spec.model
            if len(config.encoders) > 1:
                kind += f" on {spec.encoder} latents"
            detail = f"{kind}, step {at} of {total}" + (" (resume)" if 0 < at < total else "")
            if at < total and (arm, seed) not in needed:
                detail = f"{kind}: {held} holds every result of it"
            needs = (f"latents {spec.encoder}", *_backbone_step(spec))
            steps.append(
                Step(
                    f"train {arm} seed {seed}",
                    "train",
                    train_step,
                    where | {"arm": arm, "seed": seed},
                    needs=needs,
                    done=trained[arm, seed],
                    isolated=True,
                    resources=train_resources(_on_gpu(spec.setting("device"), gpus), per_gpu=trainings_per_gpu),
                    detail=detail,
                    work={"steps": total - at},
                )
            )
    for arm, modes in config.interventions.items():
        for seed in config.seeds:
            path = intervention_path(run_dir, arm, seed)
            detail = f"wm intervene: validation loss under {', '.join(modes)} vs pred -> {path}"
            steps.append(
                Step(
                    f"intervene {arm} seed {seed}",
                    "offline",
                    intervene_arm,
                    where | {"arm": arm, "seed": seed},
                    # the validation split: its frames and latents
                    needs=(f"train {arm} seed {seed}", f"latents {config.arms[arm].encoder}", *dataset_needs),
                    done=intervention_held[arm, seed]
                    or (trained[arm, seed] and _intervention_done(path, modes, totals[arm])),
                    resources=eval_resources(1, _on_gpu(config.arms[arm].setting("device"), gpus)),
                    detail=f"held in {held}" if intervention_held[arm, seed] else detail,
                )
            )
    for arm, mode, label in config.evaluations():
        for seed in config.seeds:
            have = episodes_held(eval_dir(run_dir, label, seed))
            done = evaluation_held[label, seed] or (trained[arm, seed] and have >= expected)
            detail = (
                f"memory {mode or config.arms[arm].rollout_mode or 'none'}, {have} of {expected} episodes "
                f"({len(ev.tasks)} task(s) x {ev.episodes_per_task}, eval_seed {ev.eval_seed})"
            )
            if evaluation_held[label, seed]:
                detail = f"memory {mode or config.arms[arm].rollout_mode or 'none'}, held in {held}"
            # An ablation ends by comparing itself with the arm's own evaluation: it runs after it.
            needs = (f"train {arm} seed {seed}", *_acting_inputs(config.arms[arm]))
            needs += (f"eval {arm} seed {seed}",) if label != arm else ()
            steps.append(
                Step(
                    f"eval {label} seed {seed}",
                    "eval",
                    evaluate_arm,
                    where | {"arm": arm, "seed": seed, "memory_mode": mode, "label": label, "held": held},
                    needs=needs,
                    done=done,
                    resources=eval_resources(ev.workers, gpus),
                    shares_pools=True,
                    detail=detail,
                    work={"episodes": expected if not trained[arm, seed] else max(0, expected - have)},
                )
            )
    # With every evaluation held and none here, DEST's report is the one to read (`StepExporter.finish`).
    nothing_here = (
        held is not None
        and all(s.done for s in steps if s.stage == "eval")
        and not any((run_dir / "eval").glob(f"*/*/{EPISODES_FILE}"))
    )
    if held is not None:
        steps = _without_unneeded_inputs(steps, held)
    steps.append(
        Step(
            "report",
            "report",
            write_run_report,
            where,
            needs=tuple(s.name for s in steps),
            done=nothing_here,
            detail=f"no evaluation here: {held} holds them"
            if nothing_here
            else f"-> {run_dir / 'report' / 'report.md'}",
        )
    )
    return Plan(steps)


def _backbone_step(spec: ArmSpec) -> tuple[str, ...]:
    """The step writing the backbone folder an arm's policy loads (none when the arm names a folder of its own)."""
    backbone = spec.backbone
    return (f"backbone {backbone.name}",) if backbone is not None and backbone.path is None else ()


def _acting_inputs(spec: ArmSpec) -> tuple[str, ...]:
    """The steps whose files a trained checkpoint of an arm reads when it acts: its backbone folder, and the encoder
    of its latents when it encodes observations (the latent-only family always: latents are what it sees; a VLA
    family with a world module)."""
    reads_latents = spec.policy_type == "world_transformer" or spec.policy_config.uses_world_module
    return ((f"latents {spec.encoder}",) if reads_latents else ()) + _backbone_step(spec)


def _without_unneeded_inputs(steps: list[Step], held: Path) -> list[Step]:
    """The dataset, latents and backbone steps marked done when no step to do needs them, directly or through
    another step to do (``held`` holds every other result): a checkpoint already here is evaluated without
    regenerating the data it was trained on."""
    by_name = {s.name: s for s in steps}
    needed: set[str] = set()
    todo = [s for s in steps if not s.done and s.stage not in ("dataset", "latents", "backbone")]
    while todo:
        for name in todo.pop().needs:
            if name not in needed:
                needed.add(name)
                if not by_name[name].done:
                    todo.append(by_name[name])
    return [
        replace(s, done=True, detail=f"not needed: {held} holds every result that reads it")
        if s.stage in ("dataset", "latents", "backbone") and not s.done and s.name not in needed
        else s
        for s in steps
    ]


def format_plan(plan: Plan) -> str:
    todo = len(plan.todo)
    lines = [f"{len(plan.steps)} steps: {len(plan.steps) - todo} done, {todo} to do"]
    lines += [f"  [{'done' if s.done else 'todo'}] {s.name:32s} {s.detail}" for s in plan.steps]
    return "\n".join(lines)


def check_run_dir(config: MatrixConfig, run_dir: Path) -> None:
    """Refuse a run folder whose matrix.yaml disagrees with ``config`` on anything that changes results."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    old, new = parse_config(read_yaml(path)), config
    diffs = _diff(old.dataset, new.dataset, "dataset") + _diff(
        old.to_dict()["evaluation"], new.to_dict()["evaluation"], "evaluation"
    )
    for encoder in old.encoders.keys() & new.encoders.keys():
        diffs += _diff(old.encoders[encoder], new.encoders[encoder], f"encoders.{encoder}")
    for backbone in old.backbones.keys() & new.backbones.keys():
        diffs += _diff(old.backbones[backbone].to_dict(), new.backbones[backbone].to_dict(), f"backbones.{backbone}")
    old_arms, new_arms = old.to_dict()["arms"], new.to_dict()["arms"]
    for arm in old_arms.keys() & new_arms.keys():
        diffs += _diff(old_arms[arm], new_arms[arm], f"arms.{arm}")
    if diffs:
        raise InputError(
            f"{run_dir} holds a matrix run with a different config ({path}):\n  "
            + "\n  ".join(diffs)
            + "\nUse another --out, or restore those settings."
        )


def merged_config(config: MatrixConfig, folder: Path) -> dict[str, Any]:
    """The matrix file of a run folder or export after running or exporting ``config`` into it: the union of its
    pieces' arms, seeds, encoders, ablations and interventions (refused when they disagree on anything that changes
    results), so that a rerun of any piece is checked against what the folder holds. The report's baseline is
    ``config``'s when it names one, else the folder's."""
    if not (folder / CONFIG_FILE).is_file():
        return config.to_dict()
    check_run_dir(config, folder)
    old, new = load_config(folder / CONFIG_FILE).to_dict(), config.to_dict()
    encoders = {e["name"]: e for e in old["encoders"]} | {e["name"]: e for e in new["encoders"]}
    merged = old | {
        "encoders": list(encoders.values()),
        "training": {"seeds": sorted(set(old["training"]["seeds"]) | set(new["training"]["seeds"]))},
        "arms": old["arms"] | new["arms"],
        "report": new["report"] if new["report"]["baseline"] is not None else old["report"],
    }
    backbones = old.get("backbones", {}) | new.get("backbones", {})
    merged |= {"backbones": backbones} if backbones else {}
    for section in ("ablations", "interventions"):
        merged[section] = {
            arm: list(dict.fromkeys([*old[section].get(arm, []), *new[section].get(arm, [])]))
            for arm in old[section] | new[section]
        }
    parse_config(merged)  # the union must itself be a valid matrix file
    return merged


def _diff(old: Any, new: Any, where: str) -> list[str]:
    leaf = where.rsplit(".", 1)[-1]
    if leaf in FREE_FIELDS or f"{leaf}@{where.split('.', 1)[0]}" in FREE_FIELDS:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d for k in sorted(old.keys() | new.keys(), key=str) for d in _diff(old.get(k), new.get(k), f"{where}.{k}")
        ]
    return [] if old == new else [f"{where}: existing {old!r} vs requested {new!r}"]


@dataclass(frozen=True)
class MachineLayout:
    """How one machine lays a matrix's work out, which never changes its results (so it is not part of the matrix
    file): ``trainings_per_gpu`` training runs share one GPU (`plan`); ``eval_workers`` simulator processes per
    evaluation instead of the file's ``evaluation.workers`` (None: the file's), for a machine with fewer cores or less
    memory: an episode's actions do not depend on the worker layout (a fixed inference shape per policy call:
    benchmarks/README.md, Batch-invariant rollouts)."""

    trainings_per_gpu: int = 1
    eval_workers: int | None = None

    def applied(self, config: MatrixConfig) -> MatrixConfig:
        """``config`` as this machine runs it (the file's config is what the run folder and exports record)."""
        if self.eval_workers is None:
            return config
        return replace(config, evaluation=replace(config.evaluation, workers=self.eval_workers))


def run_matrix(
    config: MatrixConfig,
    run_dir: str | Path,
    dry_run: bool = False,
    address: str | None = None,
    concurrent: bool | None = None,
    on_step_done: StepDone | None = None,
    held: str | Path | None = None,
    machine: MachineLayout = MachineLayout(),
) -> tuple[Step, ...]:
    """Run every missing step of the matrix into ``run_dir`` (or, with ``dry_run``, only plan them), on the Ray
    cluster at ``address`` if given, else on this machine: concurrently (training beside evaluation) when
    ``concurrent`` (default: the config's ``evaluation.concurrent``, else when a GPU is present), else serially.
    Each step's wall-clock start and end go to RUN_DIR/profile.json; a summary per stage is printed at the end.
    ``on_step_done(step, start, end)`` is called after each finished step, as the executor's ``on_done`` (e.g.
    `world_modality.matrix.export.StepExporter`). ``held``: that export, whose finished results count as done
    (`plan`): with the exporter, which refuses a training run again here unless it reproduces DEST's weights.
    ``machine``: how this machine lays the work out (`MachineLayout`); the results are the same whatever it is.

    Returns the plan's steps as they stood before running; the report is always rewritten. The run folder is held
    (`world_modality.locks`) while it runs: a second matrix, or a command writing into it by hand, is refused,
    while the matrix's own steps write inside it.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    if dry_run:
        return _run_matrix(config, run_dir, dry_run, address, concurrent, on_step_done, held, machine)
    with writer_lock(run_dir):
        return _run_matrix(config, run_dir, dry_run, address, concurrent, on_step_done, held, machine)


def _run_matrix(
    config: MatrixConfig,
    run_dir: Path,
    dry_run: bool,
    address: str | None,
    concurrent: bool | None,
    on_step_done: StepDone | None,
    held: str | Path | None,
    machine: MachineLayout,
) -> tuple[Step, ...]:
    exported = (run_dir / RESULTS_ONLY_FILE).exists()
    if exported and dry_run:  # the plan against an export: which pieces of the experiment remain
        print(
            f"{run_dir} holds results exported by `wm report --export` (no dataset, latents or weights): the runs "
            "and evaluations marked done are held there; run the others into another --out and merge them with "
            f"`wm report THAT_FOLDER --export {run_dir}`."
        )
    elif exported:
        raise InputError(
            f"{run_dir} holds results exported by `wm report --export`, without checkpoints: the matrix "
            "would train every arm again there and discard them. Run it into another --out, then "
            f"`wm report THAT_FOLDER --export {run_dir}` to merge its results in."
        )
    check_run_dir(config, run_dir)
    if held is not None:
        check_run_dir(config, Path(held).expanduser().resolve())  # its results count as this config's
    concurrent = config.evaluation.concurrent if concurrent is None else concurrent
    executor = default_executor(concurrent, address) if not dry_run else "serial"
    with ray_session(address) if executor == "ray" else nullcontext():
        steps = plan(
            machine.applied(config),
            run_dir,
            gpus=gpus_available(executor),
            held=held,
            trainings_per_gpu=machine.trainings_per_gpu,
        )
        print(format_plan(steps))
        if dry_run:
            return steps.steps
        output_folder(run_dir, MATRIX_RUN_KIND)
        # The union with earlier pieces run here: a later piece's rerun is checked against all of them.
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(merged_config(config, run_dir), sort_keys=False))
        profile = Profile(run_dir, executor)

        def on_done(step: Step, start: float, end: float) -> None:
            profile.record(step, start, end)
            if on_step_done is not None:
                on_step_done(step, start, end)

        execute(steps, executor, address=address, log=lambda line: print(line, flush=True), on_done=on_done)
    print(format_stage_times(stage_times(profile.this_run)))
    return steps.steps
