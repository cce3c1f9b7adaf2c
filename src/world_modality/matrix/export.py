"""Results-only copies of matrix run folders (`wm report RUN_DIR --export DEST`).

A run folder holds gigabytes of dataset, latents and weights beside a few megabytes of results. The export
copies what `wm report` reads: the per-episode results (eval/), the `wm intervene` results (intervene/), each
training run's last-checkpoint configs (the arm's world source and training memory) and its TensorBoard curves
of the loss and the gate, thinned to at most `MAX_CURVE_POINTS` points per curve (the last point and the gate's
peak kept), and the last checkpoint's gate in place of its weights (`GATE_FILE`; without weights, as in a run
folder copied without them, the report takes the final gate from the curve). Exporting several run folders into
one DEST merges them, so an experiment run in pieces on different machines (other seeds, other arms, same dataset
and episode list) gets one report. Only finished pieces are copied: an evaluation with all its episodes, a training
run at its last step; one still under way (or interrupted) is left out and named, so exporting while the matrix runs
(`wm matrix --export`) never puts a piece into DEST that would later differ from its finished self.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from world_modality.atomic_io import (
    OUTPUT_MARKER,
    atomic_write_json,
    atomic_write_text,
    commit_folder,
    output_folder,
    temp_folder,
    writing,
)
from world_modality.locks import LOCK_SUFFIX, writer_lock
from world_modality.matrix.config import (
    CONFIG_FILE,
    RESULTS_ONLY_FILE,
    MatrixConfig,
    load_config,
    report_baseline,
)
from world_modality.matrix.run import check_run_dir, episodes_held, episodes_per_evaluation, merged_config
from world_modality.schedule import Step

MAX_CURVE_POINTS = 500  # enough for the report's plots; a full curve has one point per training step
EXPORT_KIND = "results export"  # its folder's `atomic_io.OUTPUT_MARKER`


@dataclass(frozen=True)
class Export:
    """What one export did: the pieces it copied into DEST, and those of the run folder it left out because they
    are not finished (each with how far it got)."""

    added: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    def summary(self, dest: str | Path) -> str:
        if self.added:
            lines = [
                f"{len(self.added)} result folder(s) and file(s) exported to {dest}",
                *(f"  {a}" for a in self.added),
            ]
        else:  # e.g. `wm matrix --export`'s last export, after every step was exported as it ended
            lines = [f"nothing new to export: {dest} already holds every finished result"]
        if self.unfinished:
            lines += ["left out, not finished:", *(f"  {u}" for u in self.unfinished)]
        return "\n".join(lines)


def export_results(run_dir: str | Path, dest: str | Path) -> Export:
    """Copy the finished results of matrix run folder ``run_dir`` into ``dest`` (created, or merged with the pieces
    it holds; held while it is written). A piece ``dest`` already holds with other content is an error."""
    run_dir, dest = Path(run_dir).expanduser().resolve(), Path(dest).expanduser().resolve()
    if run_dir == dest:
        raise InputError(f"--export needs another folder than the run folder {run_dir}")
    with writer_lock(dest):
        return _export(run_dir, dest)


def _export(run_dir: Path, dest: Path) -> Export:
    if not (run_dir / "eval").is_dir() and not (run_dir / CONFIG_FILE).is_file():
        raise MissingFileError(f"{run_dir} has neither eval/ nor {CONFIG_FILE}: not a matrix run folder")
    run_config = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else None
    config = None if run_config is None else merged_config(run_config, dest)
    unfinished: list[str] = []
    expected = None if run_config is None else episodes_per_evaluation(run_config)
    pieces = []
    for piece in sorted(p for p in (run_dir / "eval").glob("*/seed*") if p.is_dir()):
        held = episodes_held(piece)
        if expected is not None and held < expected:
            unfinished.append(f"{piece.relative_to(run_dir)} ({held} of {expected} episodes)")
        else:
            pieces.append((piece, dest / piece.relative_to(run_dir)))
    pieces += [(p, dest / p.relative_to(run_dir)) for p in sorted((run_dir / "intervene").glob("*/seed*.json"))]
    runs = []
    for run in sorted(p for p in (run_dir / "train").glob("*/seed*") if p.is_dir()):
        progress = _training_progress(run)
        if progress is None:
            runs.append((run, dest / run.relative_to(run_dir)))
        else:
            unfinished.append(f"{run.relative_to(run_dir)} ({progress})")
    # Every conflict is found before anything is written: a refused export leaves DEST as it was.
    conflicts = [target for source, target in pieces if target.exists() and not _same(source, target)]
    held = {target: _held_checkpoint(run, target) for run, target in runs}
    retrained = [target for target, state in held.items() if state is False]
    if conflicts or retrained:
        raise InputError(
            f"{dest} already holds {', '.join(str(t.relative_to(dest)) for t in conflicts + retrained)} "
            f"with other results than {run_dir}: export pieces with other seeds or arms, or remove those "
            "from there to replace them"
            + (
                "; a training run again that gave other weights than DEST's (another GPU or other "
                "library versions do not reproduce it bit for bit) cannot add evaluations to it: run "
                "them where DEST's training ran"
                if retrained
                else ""
            )
        )
    output_folder(dest, EXPORT_KIND)
    added = []
    for source, target in pieces:
        if not target.exists():
            _copy(source, target)
            added.append(str(target.relative_to(dest)))
    for run, target in runs:
        if held[target] is None and _export_training_run(run, target):
            added.append(str(target.relative_to(dest)))
    if config is not None:
        atomic_write_text(dest / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(
        dest / RESULTS_ONLY_FILE,
        "Results exported by `wm report --export` (no dataset, latents or "
        "weights): `wm report` reads this folder; `wm matrix` does not run in it.\n",
    )
    return Export(added, unfinished)


# Steps whose results an export holds (the dataset, latents and the run's own report stay in the run folder).
EXPORTED_STAGES = frozenset({"train", "offline", "eval"})


class StepExporter:
    """`wm matrix --export DEST`: a step-done callback (`run_matrix`'s ``on_step_done``) that merges the run
    folder's finished results into DEST after each training, intervention and evaluation, so that on a machine
    lost mid-run only the steps under way are lost; `finish` exports what finished before this run too and writes
    DEST's report."""

    def __init__(self, config: MatrixConfig, run_dir: str | Path, dest: str | Path):
        self.run_dir, self.dest = Path(run_dir).expanduser().resolve(), Path(dest).expanduser().resolve()
        if self.dest == self.run_dir:
            raise InputError(f"--export needs another folder than the run folder {self.run_dir}")
        check_run_dir(config, self.dest)  # refused now, not after the first training

    def __call__(self, step: Step, start: float, end: float) -> None:
        if step.stage in EXPORTED_STAGES:
            added = export_results(self.run_dir, self.dest).added
            print(
                f"{step.name}: exported to {self.dest}" + (f" ({', '.join(added)})" if added else " (nothing new)"),
                flush=True,
            )

    def finish(self) -> Path:
        """The last export, and DEST's report; returns the report's path."""
        from world_modality.report import write_report

        print(export_results(self.run_dir, self.dest).summary(self.dest))
        return write_report(self.dest, baseline=report_baseline(self.dest))


def _training_progress(run: Path) -> str | None:
    """None when training run ``run`` is finished (its last checkpoint at its last step), else how far it got.
    A checkpoint without a step record (not written by `wm train`) counts as finished."""
    from world_modality.training.checkpoint import META_FILE, PRETRAINED, last_checkpoint

    last = last_checkpoint(run)
    if last is None:
        return "no checkpoint yet"
    meta_file = last / PRETRAINED / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    step, total = meta.get("training_step"), meta.get("total_steps")
    return f"step {step} of {total}" if step is not None and total is not None and step < total else None


def _same(source: Path, target: Path) -> bool:
    if source.is_file():
        return target.is_file() and filecmp.cmp(source, target, shallow=False)
    compared = filecmp.dircmp(source, target)
    return (
        not _results(compared.left_only)
        and not _results(compared.right_only)
        and not compared.diff_files
        and not compared.funny_files
        and all(_same(source / d, target / d) for d in compared.common_dirs)
    )


def _results(names: list[str]) -> list[str]:
    """The names of results among a folder's: its marker (`wm` wrote it) and a lock (being written) are not."""
    return [name for name in names if name != OUTPUT_MARKER and not name.endswith(LOCK_SUFFIX)]


def _copy(source: Path, target: Path) -> None:
    """Copy a file or folder so that an interrupted export leaves no partial piece behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        atomic_write_text(target, source.read_text())
        return
    tmp = temp_folder(target)
    with writing(target):
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(f"*{LOCK_SUFFIX}"))
    commit_folder(tmp, target)


def _held_checkpoint(run: Path, target: Path) -> bool | None:
    """Whether an export ``target`` holds the last checkpoint of training run ``run`` (True), another one (False), or
    none (None). The same checkpoint is the same step with the same weights: a training run again on another machine
    (`wm matrix --export` into an export that holds it) is the same when it reproduced the weights bit for bit, although
    its configs name other folders. Checkpoints without weight digests compare their configs."""
    from world_modality.training.checkpoint import PRETRAINED, last_checkpoint

    last, held = last_checkpoint(run), last_checkpoint(target) if target.exists() else None
    if held is None or last is None:
        return None
    if held.name != last.name:
        return False
    weights, held_weights = _weight_digests(last / PRETRAINED), _weight_digests(held / PRETRAINED)
    if weights and held_weights:
        return weights == held_weights
    return all(_same(c, held / PRETRAINED / c.name) for c in (last / PRETRAINED).glob("*.json"))


def _weight_digests(pretrained: Path) -> dict[str, str]:
    """The sha256 of each weights file (``*.safetensors``) a checkpoint's digest file records; empty without one."""
    from lerobot_policy_world_modality.file_digests import DIGEST_ALGORITHM, recorded_files

    files = recorded_files(pretrained) or {}
    return {name: record[DIGEST_ALGORITHM] for name, record in files.items() if name.endswith(".safetensors")}


def _export_training_run(run: Path, target: Path) -> bool:
    """The last checkpoint's JSON files (configs and provenance, no weights) and the thinned curves of one training
    run into ``target``; False when the run has no checkpoint."""
    from world_modality.report.readcheck import GATE_FILE, GATE_TAG, checkpoint_gate, read_scalars
    from world_modality.report.results import LOSS_TAGS
    from world_modality.training.checkpoint import PRETRAINED, checkpoints_dir, last_checkpoint

    last = last_checkpoint(run)
    if last is None:
        return False
    configs = sorted((last / PRETRAINED).glob("*.json"))
    tmp = temp_folder(target)
    pretrained = checkpoints_dir(tmp) / last.name / PRETRAINED
    pretrained.mkdir(parents=True)
    for path in configs:
        shutil.copy2(path, pretrained / path.name)
    gate = checkpoint_gate(last / PRETRAINED)
    if gate is not None:
        atomic_write_json(pretrained / GATE_FILE, {"abs_tanh_gate": abs(gate)})
    (checkpoints_dir(tmp) / "last").symlink_to(last.name)
    if (run / "tensorboard").is_dir():
        _write_thinned_curves(read_scalars(run / "tensorboard", (*LOSS_TAGS, GATE_TAG)), tmp / "tensorboard", GATE_TAG)
    commit_folder(tmp, target)  # replaces a checkpoint-less leftover
    return True


def _write_thinned_curves(curves: dict[str, tuple[list[int], list[float]]], out: Path, peak_tag: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out))
    for tag, (steps, values) in curves.items():
        keep = set(np.linspace(0, len(steps) - 1, min(len(steps), MAX_CURVE_POINTS)).round().astype(int).tolist())
        if tag == peak_tag and values:
            keep.add(int(np.argmax(np.abs(values))))
        for i in sorted(keep):
            writer.add_scalar(tag, values[i], steps[i])
    writer.close()
