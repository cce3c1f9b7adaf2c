"""Choice names and defaults have one home each: the command line offers exactly what their homes define
(the plugin's for names it owns, `world_modality.sim` for simulators, `world_modality.choices` for evaluation
defaults), so adding a name in its home is enough."""

from __future__ import annotations

import argparse

from lerobot.configs import PreTrainedConfig

import lerobot_policy_world_modality
from lerobot_policy_world_modality.encoders import ENCODERS
from lerobot_policy_world_modality.encoders.spec import ENCODER_NAMES
from lerobot_policy_world_modality.memory_modes import ROLLOUT_MODES
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import MODEL_TYPES
from world_modality.choices import EVAL
from world_modality.cli import build_parser
from world_modality.data.check import DatasetKeys
from world_modality.sim import DEFAULT_SIMULATOR, SIMULATOR_NAMES, evaluation_suites


def _options(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in subparsers.choices[command]._actions}


def test_policy_and_encoder_names_are_the_plugins():
    assert lerobot_policy_world_modality.POLICY_TYPES == ("world_transformer", "smolvla_world", "qwen_vla_world")
    assert set(lerobot_policy_world_modality.POLICY_TYPES) <= set(PreTrainedConfig.get_known_choices())
    assert tuple(ENCODERS) == ENCODER_NAMES
    train = _options("train")
    assert train["policy_type"].choices == lerobot_policy_world_modality.POLICY_TYPES
    assert train["model_type"].choices == MODEL_TYPES
    assert _options("latents")["encoder"].choices == ENCODER_NAMES


def test_dataset_key_defaults_are_lerobots_constants():
    from lerobot.utils.constants import ACTION, OBS_STATE

    keys = DatasetKeys()
    assert (keys.state, keys.action, keys.instruction) == (OBS_STATE, ACTION, "task")
    for command in ("train", "data"):
        options = _options(command) if command == "train" else _data_check_options()
        assert (options["state_key"].default, options["action_key"].default, options["instruction_key"].default) == (
            keys.state,
            keys.action,
            keys.instruction,
        )


def _data_check_options() -> dict[str, argparse.Action]:
    data = _options("data")["data_command"]
    return {a.dest: a for a in data.choices["check"]._actions}


def test_evaluation_choices_and_defaults_have_one_home():
    import inspect

    from world_modality.rollout import evaluate_checkpoint

    options = _options("eval")
    assert options["env"].choices == SIMULATOR_NAMES and options["env"].default == DEFAULT_SIMULATOR
    assert options["suite"].choices == evaluation_suites()
    assert options["memory_mode"].choices == ROLLOUT_MODES
    signature = inspect.signature(evaluate_checkpoint).parameters
    assert signature["env"].default == DEFAULT_SIMULATOR
    for name, default in vars(EVAL).items():
        assert options[name].default == default == signature[name].default, name


def test_count_flags_have_the_range_their_library_options_declare():
    """A count's range (`world_modality.choices.AtLeast`) is declared once, on the option of the library that reads it;
    the command line's flag refuses the same values (as does a matrix file: tests/test_matrix_config.py)."""
    import typing

    from world_modality.choices import bounds
    from world_modality.latents import compute_latents
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.sim.metaworld.generate import generate_metaworld_dataset
    from world_modality.training.trainer import TrainOptions

    data = _options("data")["data_command"]
    metaworld = {a.dest: a for a in data.choices["metaworld"]._actions}
    flags = {
        TrainOptions: (_options("train"), ("steps", "batch_size", "save_every", "log_every", "data_workers")),
        evaluate_checkpoint: (
            _options("eval"),
            ("episodes_per_task", "workers", "groups", "max_steps", "eval_seed", "videos_per_task"),
        ),
        generate_metaworld_dataset: (metaworld, ("episodes_per_task", "workers", "seed")),
        compute_latents: (_options("latents"), ("batch_size", "learned_steps", "temporal_window")),
    }
    for target, (options, names) in flags.items():
        hints = typing.get_type_hints(target, include_extras=True)
        for name in names:
            assert bounds(hints[name]) == [options[name].type], (target, name)
