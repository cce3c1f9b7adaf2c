"""`wm train` at lerobot-train's pace without changing what it trains: camera frames decoded ahead of the step (only
the policy's cameras, in worker processes) give the batches LeRobot's row-by-row decoding gives, and the step computes
in the mixed precision lerobot-train picks for the same policy config.

The timing itself is measured by benchmarks/bench_vla_train_speed.py (`wm train` beside `lerobot-train`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_video_datasets import IMAGE, WRIST, write_video_dataset
from world_modality.training.checkpoint import META_FILE, PRETRAINED, STATE_FILE, TRAINING_STATE
from world_modality.training.data import ROWS, DatasetImages, PrefetchedFrames
from world_modality.training.trainer import TrainOptions, lerobot_backend_flags, lerobot_mixed_precision, train

CAMERA = "observation.images.corner2"
TINY_SMOLVLA = {
    "chunk_size": 4,
    "n_action_steps": 4,
    "num_steps": 2,
    "resize_imgs_with_padding": [32, 32],
    "max_state_dim": 8,
    "max_action_dim": 8,
    "tokenizer_max_length": 16,
    "use_world_module": False,
}
ROWS_ASKED = torch.tensor([5, 0, 5, 13, 2, 9])  # unordered, one repeated

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    return write_smolvlm_folder(tmp_path_factory.mktemp("smolvlm") / "tiny", "tiny")


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory) -> Path:
    """2 episodes x 8 frames of two 32x32 cameras stored as video."""
    rng = np.random.default_rng(3)
    frames = [[rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]
    return write_video_dataset(
        tmp_path_factory.mktemp("video") / "two-cameras",
        *frames,
        task="stack the blocks",
        instruction="put the red block on the blue one",
    )


def _lerobot_frames(dataset: Path, cameras: list[str], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frames as `wm train` decoded them before: `LeRobotDataset.__getitem__` row by row (every column)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lerobot_dataset = LeRobotDataset(f"local/{dataset.name}", root=dataset, video_backend="pyav")
    items = [lerobot_dataset[int(i)] for i in rows]
    return {key: torch.stack([item[key] for item in items]) for key in cameras}


def _assert_same_frames(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("storage", ["image", "video"])
def test_frames_are_lerobots_and_only_the_policy_cameras_are_decoded(
    storage, metaworld_dataset, video_dataset, monkeypatch
):
    from lerobot.datasets import dataset_reader
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset, camera = (metaworld_dataset, CAMERA) if storage == "image" else (video_dataset, WRIST)
    expected = _lerobot_frames(dataset, [camera], ROWS_ASKED)
    images = DatasetImages(dataset, [camera])

    def whole_row(self, idx):
        raise AssertionError("a whole row was decoded")

    decoded_videos = []
    decode = dataset_reader.decode_video_frames
    monkeypatch.setattr(LeRobotDataset, "__getitem__", whole_row)
    monkeypatch.setattr(
        dataset_reader,
        "decode_video_frames",
        lambda path, *args, **kwargs: decoded_videos.append(path) or decode(path, *args, **kwargs),
    )
    _assert_same_frames(images.frames(ROWS_ASKED), expected)
    if storage == "video":  # the other camera's video is never opened
        assert decoded_videos and all(
            WRIST in Path(path).parts and IMAGE not in Path(path).parts for path in decoded_videos
        )


def test_both_video_cameras_in_the_order_asked(video_dataset):
    expected = _lerobot_frames(video_dataset, [WRIST, IMAGE], ROWS_ASKED)
    _assert_same_frames(DatasetImages(video_dataset, [WRIST, IMAGE]).frames(ROWS_ASKED), expected)


def test_worker_processes_decode_the_batches_in_order(metaworld_dataset):
    """A worker process (spawned, as lerobot-train's) decodes the batches ahead, each as the main process would."""
    images = DatasetImages(metaworld_dataset, [CAMERA])
    batches = [ROWS_ASKED, torch.tensor([1, 2]), ROWS_ASKED.flip(0)]
    prefetched = PrefetchedFrames(images, iter(batches), workers=1)
    try:
        for rows, got in zip(batches, prefetched, strict=True):
            assert torch.equal(got[ROWS], rows)
            _assert_same_frames({CAMERA: got[CAMERA]}, images.frames(rows))
    finally:
        prefetched.close()


def _train_smolvla(dataset, latents, vlm_folder, out: Path, steps: int = 4, resume: bool = False, **options) -> Path:
    policy = {**TINY_SMOLVLA, "vlm_model_name": str(vlm_folder), **options.pop("policy", {})}
    return train(
        TrainOptions(
            dataset=str(dataset),
            latents=str(latents),
            out=str(out),
            policy_type="smolvla_world",
            steps=steps,
            batch_size=4,
            save_every=options.pop("save_every", 2),
            policy=policy,
            device="cpu",
            progress=False,
            resume=resume,
            **options,
        )
    )


def _curve(run: Path, tag: str = "train/loss") -> list[float]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / PRETRAINED / "model.safetensors")


class RowByRow:
    """The frames as `wm train` decoded them before: in the step, by `LeRobotDataset.__getitem__` row by row."""

    def __init__(self, images: DatasetImages, row_batches, workers: int, pin_memory: bool = False) -> None:
        self.images, self.row_batches = images, row_batches

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = next(self.row_batches)
        return {ROWS: rows, **_lerobot_frames(Path(self.images.dataset.root), self.images.camera_keys, rows)}

    def close(self) -> None:
        pass


def test_training_batches_do_not_depend_on_how_frames_are_decoded(
    metaworld_dataset, state_latents, vlm_folder, tmp_path, monkeypatch
):
    """The same loss curve and weights: frames decoded ahead by a worker process, or in this process, and row by row
    by `LeRobotDataset.__getitem__` in the step (as `wm train` decoded them before); and a run resumed half-way."""
    from world_modality.training import trainer

    runs = {
        workers: _train_smolvla(
            metaworld_dataset, state_latents, vlm_folder, tmp_path / f"workers{workers}", data_workers=workers
        )
        for workers in (0, 1)
    }
    _train_smolvla(metaworld_dataset, state_latents, vlm_folder, tmp_path / "resumed", steps=2, data_workers=0)
    runs["resumed"] = _train_smolvla(
        metaworld_dataset, state_latents, vlm_folder, tmp_path / "resumed", resume=True, data_workers=0
    )
    monkeypatch.setattr(trainer, "PrefetchedFrames", RowByRow)
    runs["row by row"] = _train_smolvla(
        metaworld_dataset, state_latents, vlm_folder, tmp_path / "row-by-row", data_workers=0
    )
    curves = {name: _curve(checkpoint.parents[1]) for name, checkpoint in runs.items()}
    assert len(curves[0]) == 4 and all(curve == curves[0] for curve in curves.values()), curves
    assert _curve(runs[0].parents[1], "val/loss") == _curve(runs[1].parents[1], "val/loss")
    weights = {name: _weights(checkpoint) for name, checkpoint in runs.items()}
    for name, other in weights.items():
        assert all(torch.equal(other[key], value) for key, value in weights[0].items()), name


def _policy_config(policy_type: str, **fields):
    from lerobot.configs import PreTrainedConfig

    import lerobot_policy_world_modality  # noqa: F401  (registers the plugin's config classes)

    return PreTrainedConfig.get_choice_class(policy_type)(push_to_hub=False, **{"device": "cpu", **fields})


def _lerobot_train_mixed_precision(config, monkeypatch) -> str:
    """The mixed precision lerobot-train's own code gives ``config``: its `train` run up to the Accelerator it makes."""
    import accelerate
    from accelerate.utils import parse_choice_from_env
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.scripts import lerobot_train

    class Made(Exception):
        pass

    def accelerator(**kwargs):
        raise Made(kwargs["mixed_precision"])

    monkeypatch.setattr(accelerate, "Accelerator", accelerator)
    with pytest.raises(Made) as made:
        lerobot_train.train(TrainPipelineConfig(dataset=DatasetConfig(repo_id="local/x"), policy=config))
    # None leaves it to accelerate: `accelerate launch --mixed_precision`, else "no"
    return made.value.args[0] or parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")


@pytest.mark.parametrize(
    "policy_type, fields, device, launch",
    [
        ("smolvla_world", {"use_amp": False}, "cpu", None),
        ("smolvla_world", {"use_amp": True}, "cpu", None),
        ("smolvla_world", {"use_amp": True}, "cuda", None),
        ("smolvla_world", {"use_amp": False}, "cpu", "fp16"),
        ("smolvla_world", {"use_amp": True}, "cpu", "fp16"),
        ("qwen_vla_world", {"use_amp": True}, "cpu", None),
        ("world_transformer", {"use_amp": False}, "cuda", "bf16"),
        ("pi0", {"dtype": "bfloat16"}, "cpu", None),  # LeRobot's policies with a `dtype` field
        ("pi0", {"dtype": "float32", "use_amp": True}, "cpu", "bf16"),
    ],
)
def test_mixed_precision_is_the_one_lerobot_train_picks(policy_type, fields, device, launch, monkeypatch):
    if launch is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launch)
    config = _policy_config(policy_type, **fields)
    config.device = device  # set after the config's checks, which would fall back to the CPU on this machine
    expected = _lerobot_train_mixed_precision(config, monkeypatch)
    assert lerobot_mixed_precision(config) == expected


@pytest.mark.parametrize(
    "use_amp, launch, autocast", [(False, None, None), (True, None, torch.bfloat16), (False, "fp16", torch.float16)]
)
def test_wm_train_steps_in_that_precision(
    use_amp, launch, autocast, metaworld_dataset, state_latents, vlm_folder, tmp_path, monkeypatch
):
    """On CPU: use_amp gives bf16 autocast (torch's default there, as lerobot-train); fp16 (here through `accelerate
    launch --mixed_precision`) also scales the loss, and the scaler's state is checkpointed for --resume."""
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy

    if launch is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launch)
    seen = []
    forward = SmolVLAWorldPolicy.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SmolVLAWorldPolicy, "forward", recording)
    checkpoint = _train_smolvla(
        metaworld_dataset, state_latents, vlm_folder, tmp_path / "run", steps=2, policy={"use_amp": use_amp}
    )
    assert len(seen) >= 3 and set(seen) == {autocast}  # the training steps and the validation
    assert all(np.isfinite(_curve(checkpoint.parents[1])))
    scaler = torch.load(checkpoint / TRAINING_STATE / STATE_FILE, weights_only=False)["grad_scaler"]
    assert (scaler is not None) == (autocast == torch.float16)
    config = json.loads((checkpoint / PRETRAINED / "config.json").read_text())
    assert config["use_amp"] is use_amp


@pytest.mark.parametrize(
    "policy_type, device, lerobots",
    [
        ("smolvla_world", "cuda", True),
        ("qwen_vla_world", "cuda", True),
        ("world_transformer", "cuda", False),
        ("smolvla_world", "cpu", False),
    ],
)
def test_cuda_settings_are_lerobot_trains_for_the_vla_families_during_training(policy_type, device, lerobots):
    """TF32 matrix products and cuDNN's autotuner, as lerobot-train sets them, while a VLA family trains on CUDA;
    restored afterwards. (The flags are process settings: set and read here without a GPU.)"""

    def flags() -> tuple[bool, bool]:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark

    before = flags()
    assert before == (False, False)  # torch's defaults
    with lerobot_backend_flags(torch.device(device), policy_type):
        assert flags() == ((True, True) if lerobots else before)
    assert flags() == before


@pytest.mark.slow
def test_the_benchmark_runs_lerobot_train_and_wm_train_and_writes_its_figures(metaworld_dataset, tmp_path):
    """benchmarks/bench_vla_train_speed.py end to end on the CPU (tiny backbone, a few steps): each tool in its own
    process (the compiled arm with `--compile`), every step timed, the table and the JSON file of issue 38 (device,
    date, commit, per-arm samples/s)."""
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV
    from lerobot_cli import REPO

    result = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_vla_train_speed.py"),
            "--size",
            "tiny",
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--dataset",
            str(metaworld_dataset),
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(result),
            "--profile",
        ],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(result.read_text())
    assert set(figures["arms"]) == {"lerobot E0", "wm E0", "wm E2", "wm E2 compiled"}
    assert all(
        arm["samples_per_s"] > 0 and arm["step_ms_p90"] >= arm["step_ms_median"] > 0 for arm in figures["arms"].values()
    )
    assert set(figures["ratios"]) == {"wm E0 / lerobot E0", "wm E2 / lerobot E0", "wm E2 compiled / lerobot E0"}
    assert figures["device"].startswith("CPU") and figures["commit"] and figures["date"]
    assert figures["settings"]["batch_size"] == 2 and figures["settings"]["amp"] is False
    assert "| wm E0 |" in proc.stdout and "wm E0 / lerobot E0" in proc.stdout
    profiles = sorted((tmp_path / "work" / "timings").glob("*.profile.txt"))
    assert len(profiles) == 4 and all("ms wall" in p.read_text() for p in profiles)
    assert "(target >= 2, issue 38)" in proc.stdout


def test_fused_optimizer_makes_the_same_update():
    """The compiled step's optimizer (`fused`): LeRobot's AdamW preset with the same groups and hyper-parameters (a
    group's own learning rate included), each update computed by one fused kernel per group; the same weights after
    a few steps within float rounding."""
    from lerobot.optim.optimizers import AdamWConfig

    from world_modality.training.trainer import fused

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}]  # noqa: E731
    preset = AdamWConfig(lr=1e-3, weight_decay=0.1)
    plain, fast = preset.build(groups(weights)), fused(preset.build(groups(copies)))
    assert type(fast) is torch.optim.AdamW and all(g["fused"] for g in fast.param_groups)
    assert [g["lr"] for g in fast.param_groups] == [1e-3, 0.01] and fast.defaults["weight_decay"] == 0.1
    for step in range(5):
        for params, optimizer in ((weights, plain), (copies, fast)):
            optimizer.zero_grad()
            sum(((p * (step + 1)) ** 2).sum() for p in params).backward()
            optimizer.step()
    for w, c in zip(weights, copies):
        assert torch.allclose(w, c, atol=1e-6) and not torch.equal(w, weights[0] * 0)
    assert fused(sgd := torch.optim.SGD(weights, lr=0.1)) is sgd


def test_a_resumed_run_computes_its_updates_its_own_way():
    """Resuming keeps the optimizer state of the checkpoint but this run's way of computing the update: a run
    resumed with `--compile` from a checkpoint written without it is fused (and the other way round)."""
    from world_modality.training.trainer import _Optimisation, fused

    def optimisation(optimizer):
        return _Optimisation(
            optimizer,
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
            torch.Generator().manual_seed(0),
            None,
            None,
            1.0,
        )

    weights = [torch.nn.Parameter(torch.randn(4, 3))]
    for write_fused, resume_fused in ((False, True), (True, False)):
        make = lambda: torch.optim.AdamW(weights, lr=1e-3)  # noqa: E731
        written = optimisation(fused(make()) if write_fused else make())
        weights[0].grad = torch.ones_like(weights[0])
        written.optimizer.step()
        state = written.training_state(1, torch.device("cpu"))
        resumed = optimisation(fused(make()) if resume_fused else make())
        resumed.resume(state, torch.device("cpu"))
        group = resumed.optimizer.param_groups[0]
        assert bool(group["fused"]) is resume_fused
        assert torch.equal(
            resumed.optimizer.state[weights[0]]["exp_avg"], written.optimizer.state[weights[0]]["exp_avg"]
        )


@pytest.mark.slow  # inductor compiles the tiny VLM on the CPU (~1-2 min), and each run trains 300 steps
def test_compiled_step_follows_the_eager_loss_curve(metaworld_dataset, state_latents, vlm_folder, tmp_path):
    """`--compile` (issue 38): SmolVLA-world E2 trained 300 steps from the same seed, eager and with its layer stacks
    compiled: every 50-step window's mean loss within three standard errors of the eager window's (the same curve
    within noise), the compiled run compiled graphs and its checkpoint says so."""
    from torch._dynamo.utils import counters

    def run(name: str, **options) -> tuple[list[float], int]:
        graphs = counters["stats"]["unique_graphs"]
        checkpoint = _train_smolvla(
            metaworld_dataset,
            state_latents,
            vlm_folder,
            tmp_path / name,
            steps=300,
            save_every=300,
            policy={"use_world_module": True},
            **options,
        )
        meta = json.loads((checkpoint / PRETRAINED / META_FILE).read_text())
        assert meta["compile"] is bool(options)
        return _curve(tmp_path / name), counters["stats"]["unique_graphs"] - graphs

    eager, eager_graphs = run("eager")
    compiled, compiled_graphs = run("compiled", compile=True)
    assert eager_graphs == 0 and compiled_graphs >= 2  # the vision tower and the VLM with its expert
    assert len(eager) == len(compiled) == 300
    for start in range(0, 300, 50):
        window_eager, window_compiled = np.array(eager[start : start + 50]), np.array(compiled[start : start + 50])
        standard_error = window_eager.std(ddof=1) / np.sqrt(len(window_eager))
        assert abs(window_compiled.mean() - window_eager.mean()) <= 3 * standard_error, start


def test_benchmark_files_say_when_the_code_is_not_a_commit(tmp_path, monkeypatch):
    """A benchmark's recorded commit is HEAD's, marked "+modified" while tracked files differ from it."""
    import subprocess

    from lerobot_cli import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    head = provenance.commit()
    assert len(head) >= 7 and "+" not in head
    (tmp_path / "notes.txt").write_text("untracked files change no code\n")
    assert provenance.commit() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.commit() == f"{head}+modified"
    monkeypatch.setattr(provenance, "REPO", tmp_path / "elsewhere")
    assert provenance.commit() == "unknown"
