"""Pre/post processors of F+: LeRobot's default pipelines (rename, batch, device, normalise / unnormalise).

State and action are standardised with the training data's statistics (stored with the processors in
every checkpoint); images pass through unchanged, since the Qwen-VL image processor (and the world
encoder) normalise their own input. The instruction passes through as LeRobot complementary data.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import QwenVLAWorldConfig


def make_qwen_vla_world_pre_post_processors(
    config: QwenVLAWorldConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
