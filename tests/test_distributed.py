"""`wm train` under `accelerate launch` with 2 CPU processes (gloo): the same loss curve as one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 5
# chunk_size 1: no padded action chunk, so every process's loss is a plain mean over its rows and the
# averaged gradient is exactly the one-process gradient (see the trainer's docstring); dropout 0.
TINY = [
    "--d-model",
    "32",
    "--n-layers",
    "1",
    "--set",
    "chunk_size=1",
    "--set",
    "n_action_steps=1",
    "--set",
    "dropout=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in ("train/loss", "train/grad_norm", "val/action_loss")}


def _train_args(dataset, latents, out, steps=STEPS):
    return [
        "train",
        str(dataset),
        "--latents",
        str(latents),
        "--model-type",
        "A",
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--save-every",
        "3",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        *TINY,
    ]


def _launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "world_modality.cli",
        *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


@pytest.mark.slow  # ~60 s on 2 cores: two 2-process launches (imports dominate), two 1-process runs
def test_two_processes_match_one_process(metaworld_dataset, state_latents, tmp_path):
    import torch

    from world_modality.cli import main
    from world_modality.training.checkpoint import load_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_args(metaworld_dataset, state_latents, tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    _launch(_train_args(metaworld_dataset, state_latents, tmp_path / "two"), processes=2)

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one["train/loss"]) == STEPS and len(two["train/loss"]) == STEPS  # only the main process logged
    for tag in one:
        assert two[tag] == pytest.approx(one[tag], rel=1e-5), tag
    assert one["train/loss"][0] != one["train/loss"][-1]  # it trained
    # Checkpoints: written once, by the main process, with the same weights.
    a, b = (load_checkpoint(tmp_path / run, "cpu") for run in ("one", "two"))
    assert b.meta["processes"] == 2 and a.meta["processes"] == 1
    assert sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir()) == ["000003", "000005", "last"]
    for (name, x), (_, y) in zip(a.policy.state_dict().items(), b.policy.state_dict().items()):
        if name.endswith("in_proj_bias"):
            # The key bias has no gradient (softmax ignores a shift shared by all keys): its values are
            # rounding noise that AdamW scales up to ~lr, different for any reduction order. Compare q, v.
            x, y = (torch.cat([t[: len(t) // 3], t[2 * len(t) // 3 :]]) for t in (x, y))
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=name)

    # Resuming from step 5 to 7 on 2 processes continues exactly as on one.
    _launch([*_train_args(metaworld_dataset, state_latents, tmp_path / "two", steps=7), "--resume"], processes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*_train_args(metaworld_dataset, state_latents, tmp_path / "one", steps=7), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    resumed = _losses(tmp_path / "two")["train/loss"]
    assert len(resumed) == 7 and resumed == pytest.approx(_losses(tmp_path / "one")["train/loss"], rel=1e-5)


def test_global_batch_must_split_evenly(metaworld_dataset, state_latents, tmp_path, monkeypatch):
    from world_modality.training.trainer import TrainOptions, train

    monkeypatch.setenv("WORLD_SIZE", "2")  # as `accelerate launch --num_processes 2` sets it
    with pytest.raises(ValueError, match=r"--batch-size 7 \(the global batch\) must be a multiple of the 2 processes"):
        train(TrainOptions(dataset=str(metaworld_dataset), latents=str(state_latents), out=str(tmp_path), batch_size=7))
