"""Fault injection: damaged files, bad inputs and kill -9, each ending in the right result or one clear error.

Every damage class has a test that fails when its detection is removed: flipped bytes or truncation in a
generated dataset, a latent cache, a checkpoint's weights, processor or training state, an encoder folder and
an episodes file; datasets without features; broken model folders; checkpoints that do not fit the simulator;
a changed instruction key. Errors are one paragraph on stderr, exit status 2, no traceback (``--debug`` shows it),
raised before any simulator starts. The kill -9 tests (slow) kill `wm data metaworld`, `wm latents`, `wm train`
and `wm eval` at a random point and check that the rerun gives the undamaged result.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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
    train(TrainOptions(dataset=str(metaworld_dataset), latents=str(latents), out=str(out), model_type="F", steps=2,
                       batch_size=8, save_every=2, device="cpu", progress=False))
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
    return ["eval", str(checkpoint), "--tasks", "reach-v3", "--episodes-per-task", "1", "--max-steps", "2",
            "--workers", "1", "--device", "cpu", "--out", str(out)]


def train_args(dataset: Path, latents: Path, out: Path, steps: int = 2) -> list[str]:
    return ["train", str(dataset), "--latents", str(latents), "--model-type", "F", "--steps", str(steps),
            "--batch-size", "8", "--save-every", "2", "--device", "cpu", "--no-progress", "--out", str(out)]


# --- damaged files: detected, named, with what to do ----------------------------------------------------------


def test_a_damaged_generated_dataset_is_named_by_check_latents_and_train(metaworld_dataset, latents, tmp_path, capsys):
    dataset = copy_of(metaworld_dataset, tmp_path)
    damaged = dataset / "data" / "chunk-000" / "file-000.parquet"
    flip(damaged)
    expected = f"{damaged} is damaged: its content differs from the sha256 recorded when it was written"
    for args in (["data", "check", dataset], ["latents", dataset, "--encoder", "state", "--out", tmp_path / "lat"],
                 train_args(dataset, latents, tmp_path / "run")):
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


def test_a_damaged_or_truncated_latent_cache_is_refused_and_a_rerun_rebuilds_it(metaworld_dataset, latents, tmp_path, capsys):
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
        main(["--debug", "data", "check", str(dataset)])


def test_a_model_folder_with_broken_weights_is_one_clear_error(metaworld_dataset, tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                             patch_size=8)).save_pretrained(folder)
    truncate(folder / "model.safetensors", keep=0.3)
    status, err = wm(capsys, "latents", metaworld_dataset, "--encoder", "dinov2", "--encoder-path", folder,
                     "--out", tmp_path / "lat")
    line = one_paragraph(err)
    assert status == 2 and f"the weights in {folder} do not load" in line and "copy the model folder again" in line


@pytest.mark.parametrize("change", ["camera", "state dims"])
def test_a_checkpoint_that_does_not_fit_the_simulator_is_refused_before_it_starts(run, tmp_path, capsys, no_simulator,
                                                                                  change):
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
    assert wm(capsys, "latents", dataset, "--encoder", "state", "--camera-key", "observation.state", "--out", latents)[0] == 0
    assert wm(capsys, *train_args(dataset, latents, tmp_path / "run"))[0] == 0
    status, err = wm(capsys, *train_args(dataset, latents, tmp_path / "run", steps=4), "--resume",
                     "--instruction-key", INSTRUCTION_COLUMN)
    line = one_paragraph(err)
    assert status == 2 and f"instruction key: checkpoint 'task', given '{INSTRUCTION_COLUMN}'" in line


# --- bad input refused up front, naming the field and the fix --------------------------------------------------


@pytest.mark.parametrize(("args", "flag"), [
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
])
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


@pytest.mark.parametrize(("given", "expected"), [
    (["--model-type", "A"], "model_type: the run's 'F', given 'A'"),
    (["--policy", "smolvla_world"], "policy_type: the run's 'world_transformer', given 'smolvla_world'"),
    (["--batch-size", "16"], "batch_size: the run's 8, given 16"),
    (["--seed", "3"], "seed: the run's 0, given 3"),
    (["--chunk-size", "8"], "chunk_size: the run's 16, given 8"),
    (["--set", "lambda_world=0.5", "--set", "history_len=4"], "lambda_world: the run's 1.0, given 0.5)"),
])
def test_a_flag_that_contradicts_the_run_being_resumed_is_refused_naming_both_values(metaworld_dataset, latents, run,
                                                                                     tmp_path, capsys, given, expected):
    resumed = copy_of(run, tmp_path, "run")
    args = ["train", metaworld_dataset, "--latents", latents, "--steps", "4", "--save-every", "2", "--device", "cpu",
            "--no-progress", "--out", resumed, "--resume", *given]
    status, err = wm(capsys, *args)
    line = one_paragraph(err)
    assert status == 2 and f"resuming {resumed}: options contradict the run ({expected}" in line
    assert "leave these options out" in line
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["000002", "last"]  # before any work


def test_a_resumed_run_keeps_its_own_settings_for_flags_left_out(metaworld_dataset, latents, run, tmp_path, capsys):
    """Flags left out take the run's values (its batch size 8, not the default 64); those given equal to the run's
    pass."""
    resumed = copy_of(run, tmp_path, "run")
    common = ["train", metaworld_dataset, "--latents", latents, "--save-every", "2", "--device", "cpu", "--no-progress",
              "--out", resumed, "--resume"]
    assert wm(capsys, *common, "--steps", "4")[0] == 0
    assert wm(capsys, *common, "--steps", "6", "--model-type", "F", "--batch-size", "8", "--set", "history_len=4")[0] == 0
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


def test_wm_eval_refuses_unknown_tasks_and_bad_counts_before_loading_weights(run, tmp_path, capsys, no_simulator,
                                                                              weights_never_load):
    from world_modality.rollout import evaluate_checkpoint

    status, err = wm(capsys, *eval_args(run, tmp_path / "eval")[:2], "--tasks", "push-v3", "--device", "cpu",
                     "--out", tmp_path / "eval")
    assert status == 2 and "the policy was not trained on ['push-v3']" in one_paragraph(err)
    status, err = wm(capsys, *eval_args(run, tmp_path / "eval")[:2], "--tasks", "no-such-task", "--out", tmp_path / "eval")
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
    return write_video_dataset(tmp_path_factory.mktemp("instructions") / "data", *frames, task="do the task",
                               instruction=["put red on blue", "put blue on red"])


def test_one_instruction_for_every_episode_beside_a_varying_text_column_is_refused(one_instruction_dataset, tmp_path,
                                                                                     capsys):
    from test_video_datasets import INSTRUCTION_COLUMN

    dataset = one_instruction_dataset
    expected = (f"every episode has the same instruction under 'task' ('do the task'), while the text column "
                f"'{INSTRUCTION_COLUMN}' differs between episodes (2 values: 'put blue on red', 'put red on blue')")
    latents = tmp_path / "latents"
    for args in (["data", "check", dataset],
                 ["latents", dataset, "--encoder", "state", "--camera-key", "observation.state", "--out", latents],
                 train_args(dataset, latents, tmp_path / "run")):
        status, err = wm(capsys, *args)
        line = one_paragraph(err)
        assert status == 2 and expected in line, args
        assert f"Pass --instruction-key {INSTRUCTION_COLUMN}" in line and "or --single-instruction" in line
    assert not latents.exists() and not (tmp_path / "run").exists()  # refused before any work
    # Either fix: the column that varies, or saying that one instruction is meant.
    assert wm(capsys, "data", "check", dataset, "--instruction-key", INSTRUCTION_COLUMN)[0] == 0
    assert wm(capsys, "data", "check", dataset, "--single-instruction")[0] == 0
    assert wm(capsys, "latents", dataset, "--encoder", "state", "--camera-key", "observation.state", "--out", latents,
              "--single-instruction")[0] == 0


# --- kill -9 at a random point, then the same command again ---------------------------------------------------

WM = REPO / ".venv" / "bin" / "wm"


def wm_process(args: list, timeout: int = 900) -> float:
    """Run `wm ARGS` to completion in a subprocess; returns its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([str(WM), *map(str, args)], env=SUBPROCESS_ENV, cwd=REPO, timeout=timeout, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - start


def killed_at_random_point(args: list, duration: float, seed: str) -> float:
    """Start `wm ARGS` and SIGKILL its whole process group (simulator and data workers included) at a random
    point of a run that takes ``duration``; returns the point (seconds after the start)."""
    point = random.Random(seed).uniform(0.25, 0.95) * duration
    proc = subprocess.Popen([str(WM), *map(str, args)], env=SUBPROCESS_ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
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
    return {p.relative_to(root).as_posix(): json.loads(p.read_text()) if p.suffix == ".json"
            else pq.read_table(p).to_pydict() if p.suffix == ".parquet" else p.read_bytes() for p in files}


@pytest.mark.slow
def test_kill_9_during_wm_data_metaworld_then_rerun_gives_the_same_dataset(tmp_path):
    args = ["data", "metaworld", "--tasks", "reach-v3,drawer-close-v3", "--episodes-per-task", "2", "--image-size", "32",
            "--workers", "2"]
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
    weights = [load_file(run / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
               for run in (tmp_path / "reference", tmp_path / "killed")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_kill_9_during_wm_eval_then_rerun_gives_the_same_episodes(run, tmp_path):
    from world_modality.atomic_io import read_jsonl

    def args(out: Path) -> list:
        return ["eval", run, "--tasks", "reach-v3", "--episodes-per-task", "4", "--max-steps", "15", "--workers", "2",
                "--device", "cpu", "--out", out]

    duration = wm_process(args(tmp_path / "reference"))
    killed_at_random_point(args(tmp_path / "killed"), duration, "eval")
    wm_process(args(tmp_path / "killed"))
    fields = ("episode_id", "success", "steps")
    reference, rerun = ([tuple(r[f] for f in fields) for r in read_jsonl(out / "episodes.jsonl")]
                        for out in (tmp_path / "reference", tmp_path / "killed"))
    assert len(rerun) == len(set(rerun)) == 4 and sorted(rerun) == sorted(reference)
