"""Each VLA family can still learn to act: trained from scratch on one easy MetaWorld task, it succeeds closed loop.

What it guards: everything between a user's `wm` commands and a policy that acts, for `smolvla_world` (LeRobot's
SmolVLA + world memory) and `qwen_vla_world` (F+) with the world module on (E2: the default predicted memory):
dataset generation, `state` latents, `wm train` (image decoding, normalisation, the optimizer and schedule, which
parts of the backbone learn, the action head, the world module), checkpoint loading and `wm eval` (online world
latents, action queue, un-normalisation, paired episodes on layouts disjoint from training). A change that breaks
any of them so that the policy no longer learns fails here, where component tests and loss curves can still pass.

Configuration (the commands a user runs; tiny random backbones, nothing pretrained):
- `wm data metaworld --tasks button-press-topdown-v3 --episodes-per-task 20` (128 px corner2 frames; the button's
  place changes with the layout and is seen only in the image) and `wm latents --encoder state`.
- `wm train --steps S --batch-size 32 --chunk-size 10 --n-action-steps 10 --scheduler-warmup-steps 50`, one thread:
  - SmolVLA-world: `write_smolvlm_folder(DIR, "tiny")` as `vlm_model_name`, `freeze_vision_encoder=false` and
    `train_expert_only=false` (from scratch the VLM must learn too), 128 px VLM input (`resize_imgs_with_padding`),
    `--optimizer-lr 5e-4`, 500 steps.
  - F+: `write_qwen_vl_folder(DIR, "qwen3_vl", "tiny")` as `backbone_path` (float32), LoRA on the random backbone
    (the default `finetune`), `--optimizer-lr 1e-3`, 400 steps.
- `wm eval --episodes-per-task 10`: at least 8 of the 10 episodes must succeed.

Measured (the 10 evaluation episodes are the same for every training seed): SmolVLA-world succeeded on 10 of 10 for
each of five training seeds at 500 steps (at 250 steps: 6, 8, 5), F+ on 10 of 10 for each of four at 400 steps
(README, Policy families). Wall time on this 2-core machine, 2026-12-07: 30 s for the shared demos and latents, then
94 s (SmolVLA-world) and 86 s (F+) per test, training and evaluation.
"""

from __future__ import annotations

import pytest

from world_modality.atomic_io import read_jsonl

TASK = "button-press-topdown-v3"
DEMOS = 20
EPISODES = 10
MIN_SUCCESSES = 8
# What both families share: the chunk, the batch and a warmup short enough for a run of a few hundred steps
# (LeRobot's SmolVLA preset warms up over 1,000 steps).
COMMON = ["--batch-size", "32", "--chunk-size", "10", "--n-action-steps", "10", "--scheduler-warmup-steps", "50"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def wm(*args: str) -> None:
    from world_modality.cli import main

    assert main([*args, "--debug"]) == 0, args  # each subcommand takes --debug, after its own words


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Expert demos of the task and their `state` latents, shared by both families."""
    root = tmp_path_factory.mktemp("vla_learning")
    dataset, latents = root / "demos", root / "latents"
    wm("data", "metaworld", "--tasks", TASK, "--episodes-per-task", str(DEMOS), "--workers", "2", "--out", str(dataset))
    wm("latents", str(dataset), "--encoder", "state", "--device", "cpu", "--out", str(latents))
    return dataset, latents


def train_and_evaluate(demos, out, policy: str, steps: int, options: list[str]) -> list[dict]:
    """`wm train` then `wm eval` of one family; the episodes' results."""
    from world_modality.training.checkpoint import checkpoint_config

    dataset, latents = demos
    wm(
        "train",
        str(dataset),
        "--latents",
        str(latents),
        "--policy",
        policy,
        "--steps",
        str(steps),
        "--save-every",
        str(steps),
        *COMMON,
        *options,
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out / "run"),
    )
    config = checkpoint_config(out / "run")[1]
    assert config.use_world_module and config.world_memory_mode_rollout == "pred"  # E2, as the experiment trains it
    wm(
        "eval",
        str(out / "run"),
        "--episodes-per-task",
        str(EPISODES),
        "--arm",
        "E2",
        "--device",
        "cpu",
        "--out",
        str(out / "eval"),
    )
    episodes = read_jsonl(out / "eval" / "episodes.jsonl")
    assert len({e["episode_id"] for e in episodes}) == EPISODES
    return episodes


def assert_learned(episodes: list[dict]) -> None:
    successes = sum(e["success"] for e in episodes)
    outcomes = [(e["episode_id"], e["success"], e["steps"]) for e in episodes]
    assert successes >= MIN_SUCCESSES, f"{successes} of {EPISODES} episodes succeeded: {outcomes}"


def test_smolvla_world_learns_from_scratch(demos, tmp_path):
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    vlm = write_smolvlm_folder(tmp_path / "smolvlm", "tiny")
    assert_learned(
        train_and_evaluate(
            demos,
            tmp_path,
            "smolvla_world",
            500,
            [
                "--optimizer-lr",
                "5e-4",
                "--set",
                f"vlm_model_name={vlm}",
                "--set",
                "freeze_vision_encoder=false",
                "--set",
                "train_expert_only=false",
                "--set",
                "resize_imgs_with_padding=[128,128]",
            ],
        )
    )


def test_qwen_vla_world_learns_from_scratch(demos, tmp_path):
    from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

    backbone = write_qwen_vl_folder(tmp_path / "qwen3_vl", "qwen3_vl", "tiny")
    assert_learned(
        train_and_evaluate(
            demos,
            tmp_path,
            "qwen_vla_world",
            400,
            [
                "--optimizer-lr",
                "1e-3",
                "--set",
                "backbone=qwen3_vl_2b_instruct",
                "--set",
                f"backbone_path={backbone}",
                "--set",
                "backbone_dtype=float32",
            ],
        )
    )
