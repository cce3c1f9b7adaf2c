"""`wm train`'s options: each default declared once (TrainOptions; the flags take theirs from it)."""

from __future__ import annotations

import dataclasses

from world_modality.cli import build_parser
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
    options = wm_train_options("--policy", "smolvla_world", "--steps", "7", "--save-every", "3", "--no-progress",
                               "--state-key", "observation.environment_state", "--chunk-size", "10")
    assert (options.policy_type, options.steps, options.save_every, options.progress) == ("smolvla_world", 7, 3, False)
    assert options.keys.state == "observation.environment_state" and options.policy == {"chunk_size": 10}


def test_the_default_model_is_the_world_transformer_configs():
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig

    options = TrainOptions(**REQUIRED)
    assert options.model_type is None and options.world_model_type == WorldTransformerConfig().model_type == "F"
    assert TrainOptions(**REQUIRED, model_type="B").world_model_type == "B"
    assert TrainOptions(**REQUIRED, policy_type="smolvla_world").world_model_type is None
