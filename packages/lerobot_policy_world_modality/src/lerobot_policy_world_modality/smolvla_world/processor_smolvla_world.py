"""Pre/post processors of SmolVLA-world: LeRobot's SmolVLA pipelines unchanged.

Rename, batch, newline + tokenise the task with the tokenizer in ``vlm_model_name``, device,
normalise (state/action mean-std, images as they are) and unnormalise the actions. The world-latent
keys (``observation.world_*``) are not features of the config, so they pass through untouched; the
world encoder normalises its own input.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.processor import PolicyAction, PolicyProcessorPipeline

from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig


def make_smolvla_world_pre_post_processors(
    config: SmolVLAWorldConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    return make_smolvla_pre_post_processors(config, dataset_stats)
