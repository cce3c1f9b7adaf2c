"""`wm train`'s options: each default declared once (TrainOptions; the flags take theirs from it), a setting given twice
with two values refused, and the trainer's refusals of bad input printed as one paragraph."""

from __future__ import annotations

import dataclasses

import pytest

from lerobot_policy_world_modality.errors import InputError
from world_modality.cli import build_parser, main
from world_modality.commands.train import NO_FLAG, train_options
from world_modality.training.options import TrainOptions

REQUIRED = {"dataset": "DATASET", "latents": "LATENTS", "out": "RUN"}
MINIMAL = ["train", REQUIRED["dataset"], "--latents", REQUIRED["latents"], "--out", REQUIRED["out"]]
# TrainOptions fields `train_options` builds from several flags, or from a flag of another meaning.
BUILT = {"keys": "--image-key, --state-key, ...", "policy": "the policy flags and --set", "progress": "--no-progress"}


def wm_train_options(*args: str, parser=None) -> TrainOptions:
    return train_options((parser or build_parser()).parse_args([*MINIMAL, *args]))


def train_parser_of(parser):
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return subparsers.choices["train"]


def test_wm_train_without_options_trains_with_train_options_defaults():
    assert wm_train_options() == TrainOptions(**REQUIRED)


def test_the_defaults_check_fails_when_a_flag_has_a_default_of_its_own():
    parser = build_parser()
    train_parser_of(parser).set_defaults(save_every=499)  # as `add_argument("--save-every", default=499)` would
    assert wm_train_options(parser=parser) != TrainOptions(**REQUIRED)


def test_every_train_option_has_a_flag_or_is_named_as_without_one():
    dests = {a.dest for a in train_parser_of(build_parser())._actions}
    missing = [f.name for f in dataclasses.fields(TrainOptions) if f.name not in dests | set(NO_FLAG) | set(BUILT)]
    assert not missing, f"TrainOptions fields without a `wm train` flag: {missing} (add one, or name them in NO_FLAG)"
    assert "policy_type" in dests  # --policy


def test_flags_reach_their_options():
    options = wm_train_options(
        "--policy",
        "smolvla_world",
        "--steps",
        "7",
        "--save-every",
        "3",
        "--no-progress",
        "--state-key",
        "observation.environment_state",
        "--chunk-size",
        "10",
    )
    assert (options.policy_type, options.steps, options.save_every, options.progress) == ("smolvla_world", 7, 3, False)
    assert options.keys.state == "observation.environment_state" and options.policy == {"chunk_size": 10}


@pytest.mark.parametrize(
    ("given", "refused"),
    [
        (["--chunk-size", "10", "--set", "chunk_size=20"], "--set chunk_size=20 contradicts --chunk-size 10"),
        (
            ["--set", "lambda_world=0.5", "--set", "lambda_world=1"],
            "--set lambda_world=1 contradicts --set lambda_world=0.5",
        ),
    ],
)
def test_a_set_that_contradicts_a_flag_or_another_set_is_refused(given, refused):
    with pytest.raises(InputError, match=f"^{refused}: give"):
        wm_train_options(*given)


def test_a_set_that_repeats_a_flag_is_accepted():
    options = wm_train_options("--chunk-size", "10", "--set", "chunk_size=10", "--set", "lambda_world=0.5")
    assert options.policy == {"chunk_size": 10, "lambda_world": 0.5}


def test_wm_train_prints_a_contradiction_as_one_paragraph(tmp_path, capsys):
    status = main(
        ["train", "D", "--latents", "L", "--out", str(tmp_path / "run"), "--n-layers", "2", "--set", "n_layers=3"]
    )
    assert (status, capsys.readouterr().err) == (
        2,
        "wm train: error: --set n_layers=3 contradicts --n-layers 2: give n_layers once\n",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("given", "refused"),
    [
        (
            ["--steps", "4", "--set", "scheduler_decay_steps=5"],
            "policy field scheduler_decay_steps: given 5, but --steps sets it to 4",
        ),
        (
            ["--model-type", "A", "--set", "model_type=F"],
            "policy field model_type: given 'F', but --model-type sets it to 'A'",
        ),
        (
            ["--device", "cpu", "--set", "device=cuda"],
            "policy field device: given 'cuda', but --device sets it to 'cpu'",
        ),
        (["--require-coc"], "--require-coc needs --coc-labels"),
        (["--policy", "smolvla_world", "--model-type", "F"], "--model-type F applies to world_transformer only"),
    ],
)
def test_a_run_refuses_settings_that_contradict_it_in_one_paragraph(
    metaworld_dataset, state_latents, tmp_path, capsys, given, refused
):
    status = main(
        [
            "train",
            str(metaworld_dataset),
            "--latents",
            str(state_latents),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--no-progress",
            *given,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"wm train: error: {refused}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # before any work


def test_a_setting_the_run_sets_may_be_repeated(metaworld_dataset, state_latents, tmp_path):
    from world_modality.training.checkpoint import checkpoint_config

    assert (
        main(
            [
                "train",
                str(metaworld_dataset),
                "--latents",
                str(state_latents),
                "--out",
                str(tmp_path / "run"),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--d-model",
                "32",
                "--n-layers",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--model-type",
                "A",
                "--set",
                "model_type=A",
                "--set",
                "scheduler_decay_steps=1",
            ]
        )
        == 0
    )
    config = checkpoint_config(tmp_path / "run")[1]
    assert (config.model_type, config.scheduler_decay_steps) == ("A", 1)


def test_the_default_model_is_the_world_transformer_configs():
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig

    options = TrainOptions(**REQUIRED)
    assert options.model_type is None and options.world_model_type == WorldTransformerConfig().model_type == "F"
    assert TrainOptions(**REQUIRED, model_type="B").world_model_type == "B"
    assert TrainOptions(**REQUIRED, policy_type="smolvla_world").world_model_type is None
