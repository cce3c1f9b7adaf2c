"""Fault injection: damaged files, bad inputs and kill -9, each ending in the right result or one clear error.

Every damage class has a test that fails when its detection is removed: flipped bytes or truncation in a
generated dataset, a latent cache, a checkpoint's weights, processor or training state, an encoder folder and
an episodes file; datasets without features; broken model folders; checkpoints that do not fit the simulator;
a changed instruction key. Errors are one paragraph on stderr, exit status 2, no traceback (``--debug`` shows it),
raised before any simulator starts. The kill -9 tests (slow) kill `wm data metaworld`, `wm latents`, `wm train`
and `wm eval` at a random point and check that the rerun gives the undamaged result. Every command that writes
refuses a second writer of its output (naming the first) and takes over the lock of a killed one; a write that fails
midway (a file-size limit: the kernel cuts writes short, as on a full disk) ends the command with one paragraph,
counts nothing half-written as done, and the same command again gives the uninterrupted result; a read-only output
is refused before any work, and `--overwrite` replaces only a dataset this tool wrote.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SUBPROCESS_ENV
from lerobot_cli import REPO
from world_modality.cli import main

LATENTS_DIR = "world_latents"


def wm(capsys, *args: str) -> tuple[int, str]:
    """`wm ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def one_paragraph(err: str) -> str:
    """The error of a refused command: a single `wm ...: error:` paragraph, no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def flip(path: Path, at: float = 0.5, count: int = 16) -> None:
    """Invert ``count`` bytes at the fraction ``at`` of the file (same size, new content)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def copy_of(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name, ignore=shutil.ignore_patterns(LATENTS_DIR), symlinks=True))


@pytest.fixture(scope="module")
def latents(state_latents) -> Path:
    return state_latents


@pytest.fixture(scope="module")
def run(metaworld_dataset, latents, tmp_path_factory) -> Path:
    from world_modality.training.trainer import TrainOptions, train

    out = tmp_path_factory.mktemp("faults") / "run"
    train(
        TrainOptions(
            dataset=str(metaworld_dataset),
            latents=str(latents),
            out=str(out),
            model_type="F",
            steps=2,
            batch_size=8,
            save_every=2,
            device="cpu",
            progress=False,
        )
    )
    return out


@pytest.fixture
def no_simulator(monkeypatch):
    """Fails the test if a simulator process would start: every refusal must come before that."""
    from world_modality.rollout import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a simulator was started before the error")

    monkeypatch.setattr(runner, "EnvPool", refuse)
    monkeypatch.setattr(runner.EnvPools, "__init__", refuse)


def eval_args(checkpoint: Path, out: Path) -> list[str]:
    return [
        "eval",
        str(checkpoint),
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "1",
        "--max-steps",
        "2",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def train_args(dataset: Path, latents: Path, out: Path, steps: int = 2) -> list[str]:
    return [
        "train",
        str(dataset),
        "--latents",
        str(latents),
        "--model-type",
        "F",
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--save-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]


# --- damaged files: detected, named, with what to do ----------------------------------------------------------


def test_a_damaged_generated_dataset_is_named_by_check_latents_and_train(metaworld_dataset, latents, tmp_path, capsys):
    dataset = copy_of(metaworld_dataset, tmp_path)
    damaged = dataset / "data" / "chunk-000" / "file-000.parquet"
    flip(damaged)
    expected = f"{damaged} is damaged: its content differs from the sha256 recorded when it was written"
    for args in (
        ["data", "check", dataset],
        ["latents", dataset, "--encoder", "state", "--out", tmp_path / "lat"],
        train_args(dataset, latents, tmp_path / "run"),
    ):
        status, err = wm(capsys, *args)
        line = one_paragraph(err)
        assert status == 2 and expected in line and "Regenerate the dataset" in line and "--no-verify" in line, args
    assert not (tmp_path / "lat").exists() and not (tmp_path / "run").exists()  # refused before any work
    # --no-verify skips the check (the full read of `wm data check` still sees the damage, or not: not asserted).
    status, err = wm(capsys, "latents", dataset, "--encoder", "state", "--out", tmp_path / "lat", "--no-verify")
    assert "is damaged" not in err


def test_data_check_reads_every_file_of_a_dataset_without_recorded_digests(metaworld_dataset, tmp_path, capsys):
    """An external dataset has no digests: `wm data check` decodes every file and names the one that does not read."""
    dataset = copy_of(metaworld_dataset, tmp_path)
    (dataset / "file_digests.json").unlink()
    assert wm(capsys, "data", "check", dataset)[0] == 0
    damaged = dataset / "data" / "chunk-000" / "file-000.parquet"
    flip(damaged, at=0.5, count=64)
    status, err = wm(capsys, "data", "check", dataset)
    assert status == 2 and f"{damaged} does not read" in one_paragraph(err)


def test_a_damaged_or_truncated_latent_cache_is_refused_and_a_rerun_rebuilds_it(
    metaworld_dataset, latents, tmp_path, capsys
):
    from lerobot_policy_world_modality.file_digests import DamagedFileError
    from lerobot_policy_world_modality.latent_cache import LATENTS_FILE, LatentCache

    reference = LatentCache.load(latents).z
    cache = Path(shutil.copytree(latents, tmp_path / "cache"))
    flip(cache / LATENTS_FILE, at=0.9)
    with pytest.raises(DamagedFileError, match="content differs from the sha256 .* Recompute the cache"):
        LatentCache.load(cache)
    status, err = wm(capsys, *train_args(metaworld_dataset, cache, tmp_path / "run"))
    assert status == 2 and f"{cache / LATENTS_FILE} is damaged" in one_paragraph(err)
    truncate(cache / LATENTS_FILE)
    with pytest.raises(DamagedFileError, match=r"is damaged: \d+ bytes, \d+ when it was written \(truncated"):
        LatentCache.load(cache)
    # The same `wm latents` command rebuilds the damaged cache.
    assert wm(capsys, "latents", metaworld_dataset, "--encoder", "state", "--out", cache)[0] == 0
    assert torch.equal(LatentCache.load(cache, dataset=metaworld_dataset).z, reference)


@pytest.mark.parametrize("damage", ["flipped weights", "truncated weights", "normaliser removed", "config edited"])
def test_a_damaged_checkpoint_is_refused_before_any_simulator_starts(run, tmp_path, capsys, no_simulator, damage):
    checkpoint = copy_of(run, tmp_path, "run")
    pretrained = checkpoint / "checkpoints" / "last" / "pretrained_model"
    if damage == "flipped weights":
        damaged = pretrained / "model.safetensors"
        flip(damaged)
    elif damage == "truncated weights":
        damaged = pretrained / "model.safetensors"
        truncate(damaged)
    elif damage == "normaliser removed":
        damaged = pretrained / "policy_preprocessor.json"
        steps = json.loads(damaged.read_text())
        steps["steps"] = [s for s in steps["steps"] if s["registry_name"] != "normalizer_processor"]
        damaged.write_text(json.dumps(steps))
    else:
        damaged = pretrained / "config.json"
        damaged.write_text(damaged.read_text().replace('"history_len": 4', '"history_len": 3'))
    status, err = wm(capsys, *eval_args(checkpoint, tmp_path / "eval"))
    line = one_paragraph(err)
    assert status == 2 and f"{damaged.resolve()} is damaged" in line and "This checkpoint cannot be trusted" in line
    if damage == "truncated weights":  # unchecked, the load itself fails: still one clear paragraph
        status, err = wm(capsys, *eval_args(checkpoint, tmp_path / "eval"), "--no-verify")
        assert status == 2 and "cannot load the checkpoint" in one_paragraph(err)


def test_a_damaged_checkpoint_is_refused_by_lerobots_own_loading(run, tmp_path, monkeypatch):
    """Outside `wm` (lerobot-eval, a user's script) the plugin's `from_pretrained` checks the same digests."""
    from lerobot_policy_world_modality.file_digests import NO_VERIFY_ENV, DamagedFileError
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    pretrained = copy_of(run, tmp_path, "run") / "checkpoints" / "last" / "pretrained_model"
    assert WorldTransformerPolicy.from_pretrained(pretrained).config.uses_world_module
    flip(pretrained / "model.safetensors")
    with pytest.raises(DamagedFileError, match="model.safetensors is damaged.*cannot be trusted"):
        WorldTransformerPolicy.from_pretrained(pretrained)
    monkeypatch.setenv(NO_VERIFY_ENV, "1")  # the user's way around it, named in the message
    WorldTransformerPolicy.from_pretrained(pretrained)


def test_a_damaged_training_state_is_refused_on_resume(metaworld_dataset, latents, run, tmp_path, capsys):
    checkpoint = copy_of(run, tmp_path, "run")
    state = checkpoint / "checkpoints" / "last" / "training_state" / "training_state.pt"
    flip(state)
    status, err = wm(capsys, *train_args(metaworld_dataset, latents, checkpoint, steps=6), "--resume")
    assert status == 2 and f"{state.resolve()} is damaged" in one_paragraph(err)


def test_a_damaged_encoder_folder_is_refused(metaworld_dataset, tmp_path, capsys):
    """`wm latents` keeps the state/learned encoder it fits inside the cache folder, with recorded digests."""
    out = tmp_path / "latents"
    assert wm(capsys, "latents", metaworld_dataset, "--encoder", "state", "--out", out)[0] == 0
    (encoder,) = out.glob("state-encoder-*")
    config = encoder / "config.json"
    config.write_text(config.read_text().replace('"mean"', '"mean" ', 1))
    status, err = wm(capsys, "latents", metaworld_dataset, "--encoder", "state", "--out", out)
    assert status == 2 and f"{config} is damaged" in one_paragraph(err) and "Rebuild the encoder" in err


def test_a_damaged_line_in_the_middle_of_an_episodes_file_is_an_error(tmp_path, capsys):
    results = tmp_path / "run" / "eval" / "E0" / "seed0" / "episodes.jsonl"
    results.parent.mkdir(parents=True)
    line = {"arm": "E0", "base_arm": "E0", "memory_mode": "none", "train_seed": 0, "task": "reach-v3", "success": True}
    results.write_text("\n".join(json.dumps(line | {"episode_id": f"e{i}"}) for i in range(3)) + "\n")
    flip(results, at=0.5, count=4)
    status, err = wm(capsys, "report", tmp_path / "run")
    assert status == 2 and f"{results}:2: not valid JSON" in one_paragraph(err)


# --- bad inputs: one paragraph, before the expensive part ---------------------------------------------------


@pytest.mark.parametrize("info", [{}, "no features"])
def test_an_info_json_without_features_is_one_clear_error(metaworld_dataset, tmp_path, capsys, info):
    dataset = copy_of(metaworld_dataset, tmp_path)
    (dataset / "file_digests.json").unlink()  # a dataset written elsewhere (ours would be refused as damaged)
    path = dataset / "meta" / "info.json"
    if info == "no features":
        info = {k: v for k, v in json.loads(path.read_text()).items() if k != "features"}
    path.write_text(json.dumps(info))
    status, err = wm(capsys, "data", "check", dataset)
    line = one_paragraph(err)
    assert status == 2 and "is not a LeRobot v3 dataset's info.json: it lacks" in line and "?" not in line
    assert ("holds nothing" in line) == (info == {})
    with pytest.raises(ValueError, match="lacks"):  # --debug shows the traceback instead
        main(["data", "check", str(dataset), "--debug"])


def test_a_model_folder_with_broken_weights_is_one_clear_error(metaworld_dataset, tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "dinov2"
    Dinov2Model(
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    ).save_pretrained(folder)
    truncate(folder / "model.safetensors", keep=0.3)
    status, err = wm(
        capsys, "latents", metaworld_dataset, "--encoder", "dinov2", "--encoder-path", folder, "--out", tmp_path / "lat"
    )
    line = one_paragraph(err)
    assert status == 2 and f"the weights in {folder} do not load" in line and "copy the model folder again" in line


@pytest.mark.parametrize("change", ["camera", "state dims"])
def test_a_checkpoint_that_does_not_fit_the_simulator_is_refused_before_it_starts(
    run, tmp_path, capsys, no_simulator, change
):
    from world_modality.atomic_io import record_digests

    checkpoint = copy_of(run, tmp_path, "run")
    pretrained = checkpoint / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((pretrained / "config.json").read_text())
    if change == "camera":
        config["encoder_spec"]["render"]["cameras"] = ["corner9"]
        expected = "unknown MetaWorld camera(s) ['corner9']"
    else:
        config["input_features"]["observation.state"]["shape"] = [8]
        expected = "does not fit the metaworld simulator: its state has 8 dims, the simulator's 4"
    (pretrained / "config.json").write_text(json.dumps(config))
    record_digests(pretrained)  # a checkpoint written this way, not a damaged one
    status, err = wm(capsys, *eval_args(checkpoint, tmp_path / "eval"))
    assert status == 2 and expected in one_paragraph(err)


def test_a_changed_instruction_key_is_refused_on_resume(libero_home, tmp_path, capsys):
    from test_video_datasets import INSTRUCTION_COLUMN, write_video_dataset

    rng = np.random.default_rng(0)
    frames = [[rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)] * 2 for _ in range(2)]
    dataset = write_video_dataset(tmp_path / "data", *frames, task="stack the blocks", instruction="put red on blue")
    latents = tmp_path / "latents"
    assert (
        wm(capsys, "latents", dataset, "--encoder", "state", "--camera-key", "observation.state", "--out", latents)[0]
        == 0
    )
    assert wm(capsys, *train_args(dataset, latents, tmp_path / "run"))[0] == 0
    status, err = wm(
        capsys,
        *train_args(dataset, latents, tmp_path / "run", steps=4),
        "--resume",
        "--instruction-key",
        INSTRUCTION_COLUMN,
    )
    line = one_paragraph(err)
    assert status == 2 and f"instruction key: checkpoint 'task', given '{INSTRUCTION_COLUMN}'" in line


# --- bad input refused up front, naming the field and the fix --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["train", "D", "--latents", "L", "--out", "R", "--steps", "0"], "--steps"),
        (["train", "D", "--latents", "L", "--out", "R", "--batch-size", "0"], "--batch-size"),
        (["train", "D", "--latents", "L", "--out", "R", "--save-every", "-1"], "--save-every"),
        (["eval", "C", "--out", "O", "--episodes-per-task", "0"], "--episodes-per-task"),
        (["eval", "C", "--out", "O", "--workers", "0"], "--workers"),
        (["eval", "C", "--out", "O", "--groups", "0"], "--groups"),
        (["eval", "C", "--out", "O", "--max-steps", "0"], "--max-steps"),
        (["eval", "C", "--out", "O", "--ray", "auto", "--shards", "0"], "--shards"),
        (["data", "metaworld", "--episodes-per-task", "0"], "--episodes-per-task"),
        (["data", "metaworld", "--workers", "0"], "--workers"),
        (["latents", "D", "--encoder", "state", "--batch-size", "0"], "--batch-size"),
        (["latents", "D", "--encoder", "learned", "--learned-steps", "0"], "--learned-steps"),
        (["tokens", "L", "--codebook-size", "0"], "--codebook-size"),
        (["intervene", "C", "--dataset", "D", "--latents", "L", "--batch-size", "0"], "--batch-size"),
        (["demo", "--train-steps", "0"], "--train-steps"),
        (["demo", "--seeds", "0"], "--seeds"),
    ],
)
def test_a_count_below_one_on_the_command_line_is_refused_naming_the_flag_and_the_range(args, flag, capsys):
    """Read before anything is imported or opened (the paths here do not exist): the flag and its range."""
    with pytest.raises(SystemExit) as refused:
        main(args)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "Traceback" not in err
    assert f"error: argument {flag}: expected an integer >= 1, got {args[-1]}" in err


def test_counts_below_one_in_the_python_api_are_refused_before_any_work(metaworld_dataset, tmp_path, no_simulator):
    from world_modality.latents import compute_latents
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.training.trainer import TrainOptions

    with pytest.raises(ValueError, match=r"^steps: expected an integer >= 1, got -5$"):
        TrainOptions(dataset="D", latents="L", out="R", steps=-5)
    with pytest.raises(ValueError, match=r"^batch_size: expected an integer >= 1, got 0$"):
        TrainOptions(dataset="D", latents="L", out="R", batch_size=0)
    with pytest.raises(ValueError, match=r"^episodes_per_task: expected an integer >= 1, got 0$"):
        evaluate_checkpoint(tmp_path / "no-checkpoint", episodes_per_task=0, arm="E0", train_seed=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^batch_size: expected an integer >= 1, got 0$"):
        compute_latents(metaworld_dataset, "state", batch_size=0, out=tmp_path / "lat")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["--model-type", "A"], "model_type: the run's 'F', given 'A'"),
        (["--policy", "smolvla_world"], "policy_type: the run's 'world_transformer', given 'smolvla_world'"),
        (["--batch-size", "16"], "batch_size: the run's 8, given 16"),
        (["--seed", "3"], "seed: the run's 0, given 3"),
        (["--chunk-size", "8"], "chunk_size: the run's 16, given 8"),
        (["--set", "lambda_world=0.5", "--set", "history_len=4"], "lambda_world: the run's 1.0, given 0.5)"),
    ],
)
def test_a_flag_that_contradicts_the_run_being_resumed_is_refused_naming_both_values(
    metaworld_dataset, latents, run, tmp_path, capsys, given, expected
):
    resumed = copy_of(run, tmp_path, "run")
    args = [
        "train",
        metaworld_dataset,
        "--latents",
        latents,
        "--steps",
        "4",
        "--save-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        resumed,
        "--resume",
        *given,
    ]
    status, err = wm(capsys, *args)
    line = one_paragraph(err)
    assert status == 2 and f"resuming {resumed}: options contradict the run ({expected}" in line
    assert "leave these options out" in line
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["000002", "last"]  # before any work


def test_a_resumed_run_keeps_its_own_settings_for_flags_left_out(metaworld_dataset, latents, run, tmp_path, capsys):
    """Flags left out take the run's values (its batch size 8, not the default 64); those given equal to the run's
    pass."""
    resumed = copy_of(run, tmp_path, "run")
    common = [
        "train",
        metaworld_dataset,
        "--latents",
        latents,
        "--save-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        resumed,
        "--resume",
    ]
    assert wm(capsys, *common, "--steps", "4")[0] == 0
    assert (
        wm(capsys, *common, "--steps", "6", "--model-type", "F", "--batch-size", "8", "--set", "history_len=4")[0] == 0
    )
    meta = json.loads((resumed / "checkpoints" / "last" / "pretrained_model" / "world_modality.json").read_text())
    config = json.loads((resumed / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert (meta["training_step"], meta["batch_size"], meta["seed"], config["model_type"]) == (6, 8, 0, "F")


@pytest.fixture
def weights_never_load(monkeypatch):
    """Fails the test if a checkpoint's weights would load: every refusal must come before that."""
    from world_modality.training import checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the error")

    monkeypatch.setattr(checkpoint, "load_checkpoint", refuse)


def test_wm_eval_refuses_unknown_tasks_and_bad_counts_before_loading_weights(
    run, tmp_path, capsys, no_simulator, weights_never_load
):
    from world_modality.rollout import evaluate_checkpoint

    status, err = wm(
        capsys,
        *eval_args(run, tmp_path / "eval")[:2],
        "--tasks",
        "push-v3",
        "--device",
        "cpu",
        "--out",
        tmp_path / "eval",
    )
    assert status == 2 and "the policy was not trained on ['push-v3']" in one_paragraph(err)
    status, err = wm(
        capsys, *eval_args(run, tmp_path / "eval")[:2], "--tasks", "no-such-task", "--out", tmp_path / "eval"
    )
    assert status == 2 and "no-such-task" in one_paragraph(err)
    with pytest.raises(ValueError, match=r"^workers: expected an integer >= 1, got 0$"):
        evaluate_checkpoint(run, workers=0, arm="E0", train_seed=0, out_dir=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


@pytest.fixture(scope="module")
def one_instruction_dataset(libero_home, tmp_path_factory) -> Path:
    """A LIBERO-schema dataset whose every episode has the task 'do the task', with the real instructions in a text
    column that differs between its two episodes."""
    from test_video_datasets import write_video_dataset

    rng = np.random.default_rng(0)
    frames = [[rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)] * 2 for _ in range(2)]
    return write_video_dataset(
        tmp_path_factory.mktemp("instructions") / "data",
        *frames,
        task="do the task",
        instruction=["put red on blue", "put blue on red"],
    )


def test_one_instruction_for_every_episode_beside_a_varying_text_column_is_refused(
    one_instruction_dataset, tmp_path, capsys
):
    from test_video_datasets import INSTRUCTION_COLUMN

    dataset = one_instruction_dataset
    expected = (
        f"every episode has the same instruction under 'task' ('do the task'), while the text column "
        f"'{INSTRUCTION_COLUMN}' differs between episodes (2 values: 'put blue on red', 'put red on blue')"
    )
    latents = tmp_path / "latents"
    for args in (
        ["data", "check", dataset],
        ["latents", dataset, "--encoder", "state", "--camera-key", "observation.state", "--out", latents],
        train_args(dataset, latents, tmp_path / "run"),
    ):
        status, err = wm(capsys, *args)
        line = one_paragraph(err)
        assert status == 2 and expected in line, args
        assert f"Pass --instruction-key {INSTRUCTION_COLUMN}" in line and "or --single-instruction" in line
    assert not latents.exists() and not (tmp_path / "run").exists()  # refused before any work
    # Either fix: the column that varies, or saying that one instruction is meant.
    assert wm(capsys, "data", "check", dataset, "--instruction-key", INSTRUCTION_COLUMN)[0] == 0
    assert wm(capsys, "data", "check", dataset, "--single-instruction")[0] == 0
    assert (
        wm(
            capsys,
            "latents",
            dataset,
            "--encoder",
            "state",
            "--camera-key",
            "observation.state",
            "--out",
            latents,
            "--single-instruction",
        )[0]
        == 0
    )


# --- kill -9 at a random point, then the same command again ---------------------------------------------------

WM = REPO / ".venv" / "bin" / "wm"


def wm_process(args: list, timeout: int = 900) -> float:
    """Run `wm ARGS` to completion in a subprocess; returns its wall time."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(WM), *map(str, args)],
        env=SUBPROCESS_ENV,
        cwd=REPO,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - start


def killed_at_random_point(args: list, duration: float, seed: str) -> float:
    """Start `wm ARGS` and SIGKILL its whole process group (simulator and data workers included) at a random
    point of a run that takes ``duration``; returns the point (seconds after the start)."""
    point = random.Random(seed).uniform(0.25, 0.95) * duration
    proc = subprocess.Popen(
        [str(WM), *map(str, args)],
        env=SUBPROCESS_ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=point)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(f"killed `wm {args[0]}` at {point:.1f} s of a {duration:.1f} s run")
    return point


def dataset_content(root: Path) -> dict:
    """Every file of a dataset by its content: JSON parsed, parquet tables decoded (LeRobot writes a random
    fingerprint into each parquet's schema metadata, so the bytes of two identical datasets differ)."""
    import pyarrow.parquet as pq

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "file_digests.json")
    return {
        p.relative_to(root).as_posix(): json.loads(p.read_text())
        if p.suffix == ".json"
        else pq.read_table(p).to_pydict()
        if p.suffix == ".parquet"
        else p.read_bytes()
        for p in files
    }


@pytest.mark.slow
def test_kill_9_during_wm_data_metaworld_then_rerun_gives_the_same_dataset(tmp_path):
    args = [
        "data",
        "metaworld",
        "--tasks",
        "reach-v3,drawer-close-v3",
        "--episodes-per-task",
        "2",
        "--image-size",
        "32",
        "--workers",
        "2",
    ]
    duration = wm_process([*args, "--out", tmp_path / "reference"])
    killed_at_random_point([*args, "--out", tmp_path / "killed"], duration, "data")
    wm_process([*args, "--out", tmp_path / "killed"])
    assert dataset_content(tmp_path / "killed") == dataset_content(tmp_path / "reference")
    assert not list(tmp_path.glob(".*"))  # nothing half-written left beside the datasets


@pytest.mark.slow
def test_kill_9_during_wm_latents_then_rerun_gives_the_same_cache(metaworld_dataset, latents, tmp_path):
    from lerobot_policy_world_modality.latent_cache import LatentCache

    args = ["latents", metaworld_dataset, "--encoder", "state", "--batch-size", "16", "--out", tmp_path / "killed"]
    duration = wm_process([*args[:-1], tmp_path / "reference"])
    killed_at_random_point(args, duration, "latents")
    wm_process(args)
    assert torch.equal(LatentCache.load(tmp_path / "killed", dataset=metaworld_dataset).z, LatentCache.load(latents).z)


@pytest.mark.slow
def test_kill_9_during_wm_train_then_resume_gives_the_same_weights(metaworld_dataset, latents, tmp_path):
    from safetensors.torch import load_file

    args = train_args(metaworld_dataset, latents, tmp_path / "reference", steps=40)
    args[args.index("--save-every") + 1] = "5"
    duration = wm_process(args)
    killed = [*args[:-1], tmp_path / "killed"]
    killed_at_random_point(killed, duration, "train")
    wm_process([*killed, "--resume"])
    weights = [
        load_file(run / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
        for run in (tmp_path / "reference", tmp_path / "killed")
    ]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_kill_9_during_wm_eval_then_rerun_gives_the_same_episodes(run, tmp_path):
    from world_modality.atomic_io import read_jsonl

    def args(out: Path) -> list:
        return [
            "eval",
            run,
            "--tasks",
            "reach-v3",
            "--episodes-per-task",
            "4",
            "--max-steps",
            "15",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--out",
            out,
        ]

    duration = wm_process(args(tmp_path / "reference"))
    killed_at_random_point(args(tmp_path / "killed"), duration, "eval")
    wm_process(args(tmp_path / "killed"))
    fields = ("episode_id", "success", "steps")
    reference, rerun = (
        [tuple(r[f] for f in fields) for r in read_jsonl(out / "episodes.jsonl")]
        for out in (tmp_path / "reference", tmp_path / "killed")
    )
    assert len(rerun) == len(set(rerun)) == 4 and sorted(rerun) == sorted(reference)


# --- one writer per output: a second writer is refused, naming the first; a dead writer's lock is taken over ----

LOCK_HOLDER = Path(__file__).with_name("lock_holder.py")


@contextmanager
def held_by_another_process(path: Path, file: bool = False) -> Iterator[subprocess.Popen]:
    """Another process holding the writer lock of ``path`` (as a `wm` command writing it would) for the block."""
    proc = subprocess.Popen(
        [sys.executable, str(LOCK_HOLDER), str(path), *(["file"] if file else [])],
        env=SUBPROCESS_ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)


def refusal_naming(err: str, pid: int, command: str) -> str:
    """The one-paragraph refusal of a second writer: it names the first's command, pid, host and start time."""
    line = one_paragraph(err)
    assert f"by another process: `{command}" in line and f"(pid {pid} on {socket.gethostname()}, started " in line, line
    assert "One writer at a time" in line and "remove" not in line
    return line


def tiny_matrix(path: Path, dataset: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": {"path": str(dataset)},
                "encoders": [{"name": "state"}],
                "arms": {"E0": {"model_type": "A"}},
                "evaluation": {"episodes_per_task": 1},
            }
        )
    )
    return path


# Every command that writes: (its arguments, the output it holds, whether that output is a file), for an OUT.
WRITERS = {
    "data metaworld": lambda f, out: (
        ["data", "metaworld", "--tasks", "reach", "--episodes-per-task", "1", "--out", out],
        out,
        False,
    ),
    "latents": lambda f, out: (["latents", f.dataset, "--encoder", "state", "--out", out], out, False),
    "tokens": lambda f, out: (["tokens", f.latents, "--codebook-size", "4", "--out", out], out, False),
    "train": lambda f, out: (train_args(f.dataset, f.latents, out), out, False),
    "intervene": lambda f, out: (
        ["intervene", f.run, "--dataset", f.dataset, "--latents", f.latents, "--json", out],
        out,
        True,
    ),
    "eval": lambda f, out: (eval_args(f.run, out), out / "episodes.jsonl", True),
    "eval shard": lambda f, out: (
        [*eval_args(f.run, out), "--shard", "2/3"],
        out / "episodes.shard-2-of-3.jsonl",
        True,
    ),
    "report --export": lambda f, out: (["report", f.run, "--export", out], out, False),
    "matrix": lambda f, out: (["matrix", f.matrix, "--out", out], out, False),
    "matrix --export": lambda f, out: (
        ["matrix", f.matrix, "--out", out.with_name("run"), "--export", out],
        out,
        False,
    ),
    "demo": lambda f, out: (["demo", "--out", out], out, False),
    "coc generate": lambda f, out: (["coc", "generate", f.dataset, "--out", out], out, True),
    "libero dataset": lambda f, out: (["libero", "dataset", "--out", out], out, False),
    "libero pack-assets": lambda f, out: (["libero", "pack-assets", "--out", out], out, False),
}


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_refuses_a_second_writer_before_any_work(
    metaworld_dataset, latents, run, tmp_path, capsys, no_simulator, command
):
    from types import SimpleNamespace

    inputs = SimpleNamespace(
        dataset=metaworld_dataset,
        latents=latents,
        run=run,
        matrix=tiny_matrix(tmp_path / "matrix.yaml", metaworld_dataset),
    )
    args, held, file = WRITERS[command](inputs, tmp_path / "out")
    with held_by_another_process(held, file) as first:
        status, err = wm(capsys, *args)
    assert status == 2
    refusal_naming(err, first.pid, f"{LOCK_HOLDER.name} {held}")
    assert not held.exists() and not (tmp_path / "run").exists()  # nothing written
    assert not list(tmp_path.rglob("*.wm-lock"))  # and no lock left behind


def test_two_shards_share_a_folder_but_not_a_results_file(run, tmp_path, capsys):
    out = tmp_path / "eval"
    with held_by_another_process(out / "episodes.shard-1-of-2.jsonl", file=True) as first:
        status, err = wm(capsys, *eval_args(run, out), "--shard", "1/2")
        refusal_naming(err, first.pid, LOCK_HOLDER.name)
        assert status == 2
        # The other shard (of 2 episodes, so it has one), beside it.
        assert wm(capsys, *eval_args(run, out), "--episodes-per-task", "2", "--shard", "2/2")[0] == 0
    assert [p.name for p in out.glob("episodes*")] == ["episodes.shard-2-of-2.jsonl"]


def test_a_matrix_and_a_command_run_by_hand_inside_its_run_folder_refuse_each_other(
    metaworld_dataset, run, tmp_path, capsys, no_simulator
):
    """The hierarchy: a writer of a run folder holds everything in it (its own steps write there: see
    tests/test_schedule.py), so `wm eval` into one of its evaluation folders is refused, and a matrix is refused a run
    folder in which a command run by hand writes."""
    config, run_dir = tiny_matrix(tmp_path / "matrix.yaml", metaworld_dataset), tmp_path / "run"
    evaluation = run_dir / "eval" / "E0" / "seed0"
    with held_by_another_process(run_dir) as matrix_run:
        status, err = wm(capsys, *eval_args(run, evaluation))
        line = refusal_naming(err, matrix_run.pid, LOCK_HOLDER.name)
        assert status == 2 and f"{evaluation / 'episodes.jsonl'} is inside {run_dir}, which is being written" in line
    with held_by_another_process(evaluation / "episodes.jsonl", file=True) as by_hand:
        status, err = wm(capsys, "matrix", config, "--out", run_dir)
        line = refusal_naming(err, by_hand.pid, LOCK_HOLDER.name)
        assert status == 2 and f"{run_dir} holds {evaluation / 'episodes.jsonl'}, which is being written" in line
    assert not (run_dir / "matrix.yaml").exists()


def test_the_lock_of_a_killed_writer_is_taken_over(metaworld_dataset, latents, tmp_path, capsys):
    out = tmp_path / "run"
    with held_by_another_process(out) as first:
        first.kill()  # kill -9: the lock file and its record stay, the kernel lets the lock go
        first.wait()
        assert (tmp_path / ".run.wm-lock").is_file()
        status, err = wm(capsys, *train_args(metaworld_dataset, latents, out))
    assert status == 0 and f"taking over the lock of `{LOCK_HOLDER.name} {out}` (pid {first.pid}" in err
    assert (out / "checkpoints" / "last").is_dir() and not (tmp_path / ".run.wm-lock").exists()


def test_a_lock_of_another_host_is_refused_with_the_file_to_remove(metaworld_dataset, latents, tmp_path, capsys):
    """Whether a process on another machine (shared storage) still runs cannot be told: the message says which file to
    remove once it is known to have ended."""
    out, lock = tmp_path / "run", tmp_path / ".run.wm-lock"
    lock.write_text(
        json.dumps(
            {
                "path": str(out),
                "host": "node-7",
                "pid": 4242,
                "command": "wm train ...",
                "started": "2026-12-01 10:00:00 UTC",
                "token": "0123456789abcdef",
            }
        )
    )
    status, err = wm(capsys, *train_args(metaworld_dataset, latents, out))
    line = one_paragraph(err)
    assert status == 2 and "`wm train ...` (pid 4242 on node-7, started 2026-12-01 10:00:00 UTC)" in line
    assert (
        f"runs on another host, so whether it still runs cannot be told from here: once you know it does not, "
        f"remove {lock}" in line
    )
    lock.unlink()
    assert wm(capsys, *train_args(metaworld_dataset, latents, out))[0] == 0


@pytest.mark.slow
def test_two_wm_evals_into_one_out_the_second_is_refused_and_every_episode_is_recorded_once(run, tmp_path, capsys):
    """The failure this fixes: both ran and every episode was recorded twice (the report then counted 0/2 where 0/1
    ran). Two real `wm eval` processes."""
    from world_modality.atomic_io import read_jsonl

    out = tmp_path / "eval"
    args = [
        "eval",
        run,
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "3",
        "--max-steps",
        "100",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
    ]
    first = subprocess.Popen(
        [str(WM), *map(str, args)],
        env=SUBPROCESS_ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / ".episodes.jsonl.wm-lock"
    while first.poll() is None and not (lock.is_file() and lock.stat().st_size):
        time.sleep(0.05)
    status, err = wm(capsys, *args)  # a second `wm eval`, in this process, while the first runs
    assert status == 2 and first.poll() is None
    refusal_naming(err, first.pid, f"wm eval {run}")
    assert first.wait(timeout=900) == 0, first.stderr.read()[-2000:]
    assert wm(capsys, *args)[0] == 0  # the same command again: nothing left to run
    episodes = [r["episode_id"] for r in read_jsonl(out / "episodes.jsonl")]
    assert len(episodes) == len(set(episodes)) == 3


# --- write failures: one paragraph naming the file and the cause, nothing counted as done, the rerun exact ------


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """For the block, no file this process (or one it starts) writes may grow past ``size`` bytes, as `ulimit -f`
    sets: the kernel cuts a write short at the limit and fails the next one with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def failed_write(capsys, args: list, size: int) -> tuple[str, str, str]:
    """`wm ARGS` under a file-size limit: it must end with exit status 2; returns (its error paragraph, stdout,
    stderr)."""
    capsys.readouterr()
    with file_size_limit(size):
        status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    line = one_paragraph(err)
    assert status == 2 and "file too large" in line and "(EFBIG)" in line and "run the same command again" in line, err
    return line, out, err


def test_a_write_failure_in_wm_eval_ends_it_and_the_rerun_completes_exactly(run, tmp_path, capsys):
    """The failure this fixes: a full disk cut the episodes file mid-line (a write may write part of its data and
    return without error), the progress bar reached 10/10 and `wm eval` exited 0."""
    from world_modality.atomic_io import read_jsonl

    def args(out: Path) -> list:
        return [
            "eval",
            run,
            "--tasks",
            "reach-v3",
            "--episodes-per-task",
            "16",
            "--max-steps",
            "2",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--out",
            out,
        ]

    def episodes(out: Path) -> list[tuple]:
        return [
            tuple(r[k] for k in ("episode_id", "success", "steps", "action_digest"))
            for r in read_jsonl(out / "episodes.jsonl")
        ]

    assert wm(capsys, *args(tmp_path / "reference"))[0] == 0
    line_size = (tmp_path / "reference" / "episodes.jsonl").stat().st_size / 16
    results = tmp_path / "full" / "episodes.jsonl"
    # Room for 12.5 lines (and for the checkpoint's config, which LeRobot copies to a temporary file when it loads it).
    line, out, err = failed_write(capsys, args(tmp_path / "full"), int(12.5 * line_size))
    assert f"could not write {results}" in line and "results:" not in out and "12/16" in err and "13/16" not in err
    assert results.read_bytes().endswith(b"\n") and len(episodes(tmp_path / "full")) == 12  # no half line counted
    assert wm(capsys, *args(tmp_path / "full"))[0] == 0
    assert episodes(tmp_path / "full") == episodes(tmp_path / "reference")


def test_a_write_failure_in_wm_latents_ends_it_and_the_rerun_completes_exactly(
    metaworld_dataset, latents, tmp_path, capsys
):
    """It ended in a safetensors traceback (the library reports the OS error in its own exception)."""
    from lerobot_policy_world_modality.latent_cache import SPEC_FILE, LatentCache

    out = tmp_path / "latents"
    args = ["latents", metaworld_dataset, "--encoder", "state", "--out", out]
    line, _, _ = failed_write(capsys, args, 8000)
    assert f"could not write {out / 'chunks'}/episodes-" in line and not (out / SPEC_FILE).exists()
    assert wm(capsys, *args)[0] == 0
    assert torch.equal(LatentCache.load(out, dataset=metaworld_dataset).z, LatentCache.load(latents).z)


def test_a_write_failure_in_wm_train_ends_it_and_the_rerun_completes_exactly(
    metaworld_dataset, latents, run, tmp_path, capsys
):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    line, out_text, _ = failed_write(capsys, train_args(metaworld_dataset, latents, out), 64_000)
    assert f"could not write {out / 'checkpoints' / '000002'}" in line and "checkpoint:" not in out_text
    assert not (out / "checkpoints" / "last").exists()  # no checkpoint counts as written
    assert wm(capsys, *train_args(metaworld_dataset, latents, out))[0] == 0
    weights = [load_file(r / "checkpoints" / "last" / "pretrained_model" / "model.safetensors") for r in (run, out)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_write_failure_in_wm_data_metaworld_ends_it_and_the_rerun_completes_exactly(tmp_path, capsys):
    args = ["data", "metaworld", "--tasks", "reach", "--episodes-per-task", "1", "--image-size", "32", "--out"]
    assert wm(capsys, *args, tmp_path / "reference")[0] == 0
    line, _, _ = failed_write(capsys, [*args, tmp_path / "full"], 60_000)
    assert f"could not write {tmp_path / '.full.staging' / 'reach-v3'}" in line and not (tmp_path / "full").exists()
    assert wm(capsys, *args, tmp_path / "full")[0] == 0
    assert dataset_content(tmp_path / "full") == dataset_content(tmp_path / "reference")


def without_root_override() -> None:
    """In a child process before it starts its program: as root, drop the capability that writes into read-only
    folders (CAP_DAC_OVERRIDE, from the bounding set: the program starts without it), as an ordinary user lacks it."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def test_a_read_only_output_is_refused_before_any_work(metaworld_dataset, latents, run, tmp_path):
    """It was replaced (`wm data metaworld` removed the empty read-only folder and wrote its dataset there). The
    commands run in a process without root's override of permissions, where a read-only folder is one."""
    CAP_SETPCAP = 8  # needed to drop a capability from the bounding set
    if os.geteuid() == 0 and not int(re.search(r"CapEff:\s*(\w+)", Path("/proc/self/status").read_text())[1], 16) & (
        1 << CAP_SETPCAP
    ):
        pytest.skip("root that cannot drop CAP_DAC_OVERRIDE writes into read-only folders")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    commands = [
        ["data", "metaworld", "--tasks", "reach", "--episodes-per-task", "1", "--out", read_only],
        train_args(metaworld_dataset, latents, read_only / "run"),
        eval_args(run, read_only / "eval"),
    ]
    script = "import json, sys\nfrom world_modality.cli import main\nprint(json.dumps([main(a) for a in json.loads(sys.argv[1])]))"
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([[str(a) for a in c] for c in commands])],
        env=SUBPROCESS_ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=without_root_override,
    )
    assert json.loads(proc.stdout.splitlines()[-1]) == [2, 2, 2], proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 3 and "Traceback" not in proc.stderr
    for error, where in zip(errors, [read_only, read_only, read_only / "eval"]):
        assert f"cannot write to {where}: permission denied (EACCES); nothing was done" in error
    assert list(read_only.iterdir()) == []


def test_overwrite_replaces_only_a_dataset_this_tool_wrote(metaworld_dataset, run, tmp_path, capsys):
    """`--overwrite` (which the tool suggests for a dataset of another spec) removed any folder, with the user's files."""
    from world_modality.sim.metaworld.generate import SIDECAR

    args = [
        "data",
        "metaworld",
        "--tasks",
        "reach",
        "--episodes-per-task",
        "1",
        "--image-size",
        "32",
        "--overwrite",
        "--out",
    ]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    status, err = wm(capsys, *args, mine)
    assert (
        status == 2
        and "(it holds files this tool did not write); --overwrite replaces only a dataset this tool wrote"
        in one_paragraph(err)
    )
    training_run = copy_of(run, tmp_path, "run")
    status, err = wm(capsys, *args, training_run)
    assert status == 2 and "(it holds a training run written by `wm`)" in one_paragraph(err)
    assert (mine / "notes.txt").read_text() == "mine" and (training_run / "checkpoints" / "last").is_dir()
    dataset = copy_of(metaworld_dataset, tmp_path, "dataset")  # a dataset it wrote, of another spec: replaced
    assert wm(capsys, *args, dataset)[0] == 0
    assert json.loads((dataset / SIDECAR).read_text())["spec"]["tasks"] == ["reach-v3"]
