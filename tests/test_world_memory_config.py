"""The world-memory config shared by the three policy families: one set of fields and defaults, one
validation, flat field names for LeRobot's command line and saved configs."""

from __future__ import annotations

import dataclasses

import draccus
import pytest
from lerobot.configs import PreTrainedConfig

import lerobot_policy_world_modality  # noqa: F401  (registers the policy types)
from lerobot_policy_world_modality.common import WorldMemoryConfig
from lerobot_policy_world_modality.encoders import EncoderSpec

FAMILIES = ("world_transformer", "smolvla_world", "qwen_vla_world")
# Defaults a family states for itself, each with a comment in its config saying why.
FAMILY_DEFAULTS = {("world_transformer", "prophet_dim"): 128, ("qwen_vla_world", "cross_attn_heads"): 8}


def _config_class(family: str) -> type[PreTrainedConfig]:
    return PreTrainedConfig.get_choice_class(family)


def _spec(output_dim: int = 6) -> dict:
    return EncoderSpec(
        name="state",
        checkpoint_path=None,
        config_hash="test",
        camera_key="observation.environment_state",
        input_size=None,
        pooling=None,
        output_dim=output_dim,
    ).to_dict()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_shared_fields_and_defaults(family):
    config_class = _config_class(family)
    assert issubclass(config_class, WorldMemoryConfig)
    defaults = {f.name: f for f in dataclasses.fields(config_class)}
    for shared in dataclasses.fields(WorldMemoryConfig):
        field = defaults[shared.name]
        value = field.default_factory() if field.default is dataclasses.MISSING else field.default
        expected = shared.default_factory() if shared.default is dataclasses.MISSING else shared.default
        assert value == FAMILY_DEFAULTS.get((family, shared.name), expected), shared.name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"world_memory_mode_rollout": "bogus"}, "world_memory_mode_rollout must be one of"),
        ({"world_memory_mode_train": "none"}, "disables the world module"),
        ({"world_memory_mode_train": "teleport"}, "unknown MemoryMode 'teleport'"),
        ({"memory_source": "teacher"}, "unknown MemorySource 'teacher'"),
        ({"history_len": 0}, "history_len must be >= 1"),
        ({"prophet_dim": 30, "prophet_heads": 4}, "prophet_heads \\(4\\) must divide prophet_dim \\(30\\)"),
        (
            {"memory_schedule_start": 10, "memory_schedule_end": 5},
            "memory_schedule_start \\(10\\) <= memory_schedule_end",
        ),
        ({"lambda_world": -1.0}, "must be >= 0"),
        ({"gate_type": "vector"}, "gate_type must be one of"),
        ({"gate_lr_multiplier": 0.0}, "gate_lr_multiplier must be > 0"),
        ({"gate_init": float("nan")}, "gate_init must be finite"),
        ({"lambda_world_schedule": "cosine"}, "lambda_world_schedule must be one of"),
        ({"lambda_world_schedule": "linear"}, "needs lambda_world_schedule_steps >= 1"),
        ({"prophet_freeze_after_pretrain": True}, "set prophet_pretrain_steps > 0"),
        ({"encoder_spec": _spec(6), "latent_dim": 7}, "latent_dim 7 != the encoder spec's output_dim 6"),
    ],
)
def test_one_validation_for_every_family(family, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config_class(family)(**overrides)


@pytest.mark.parametrize(
    ("family", "no_world_module"),
    [
        ("world_transformer", {"model_type": "A"}),
        ("qwen_vla_world", {"use_world_module": False}),
    ],
)
def test_recipes_without_a_world_module_are_an_error(family, no_world_module):
    _config_class(family)(**no_world_module)  # the defaults are fine
    with pytest.raises(ValueError, match=r"\['gate_init'\] configure the world module"):
        _config_class(family)(**no_world_module, gate_init=0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_dim_comes_from_the_encoder_spec(family):
    assert _config_class(family)(encoder_spec=_spec(6)).latent_dim == 6


@pytest.mark.parametrize("family", FAMILIES)
def test_flat_fields_on_the_command_line_and_in_saved_configs(family, tmp_path):
    """`lerobot-train --policy.<field>=...` parses the fields with draccus; `save_pretrained` writes them
    flat and `PreTrainedConfig.from_pretrained` reads them back."""
    args = [
        "--gate_type=channel",
        "--gate_init=0.25",
        "--gate_lr_multiplier=10",
        "--memory_source=scheduled",
        "--memory_schedule_end=50",
        "--lambda_world_schedule=linear",
        "--lambda_world_start=5",
        "--lambda_world_schedule_steps=20",
        "--prophet_pretrain_steps=30",
        "--prophet_freeze_after_pretrain=true",
        "--prophet_dim=64",
        "--instructions=[reach,push]",
    ]
    config = draccus.parse(_config_class(family), args=args)
    expected = {
        "gate_type": "channel",
        "gate_init": 0.25,
        "gate_lr_multiplier": 10.0,
        "memory_source": "scheduled",
        "memory_schedule_end": 50,
        "lambda_world_schedule": "linear",
        "lambda_world_start": 5.0,
        "lambda_world_schedule_steps": 20,
        "prophet_pretrain_steps": 30,
        "prophet_freeze_after_pretrain": True,
        "prophet_dim": 64,
        "instructions": ["reach", "push"],
    }
    assert {name: getattr(config, name) for name in expected} == expected
    config._save_pretrained(tmp_path)
    loaded = PreTrainedConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(config) and {name: getattr(loaded, name) for name in expected} == expected


def test_scheduled_source_anneals_over_the_first_half_of_training_by_default():
    config = _config_class("world_transformer")(memory_source="scheduled")
    config.schedule_memory_source_over(1000)
    assert (config.memory_schedule_start, config.memory_schedule_end) == (0, 500)
    explicit = _config_class("world_transformer")(memory_source="scheduled", memory_schedule_end=80)
    explicit.schedule_memory_source_over(1000)
    assert explicit.memory_schedule_end == 80
    predicted = _config_class("world_transformer")()
    predicted.schedule_memory_source_over(1000)
    assert predicted.memory_schedule_end == 0
