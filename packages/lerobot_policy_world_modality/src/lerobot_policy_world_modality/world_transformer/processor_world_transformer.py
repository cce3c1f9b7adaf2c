"""Pre/post processors of the world transformer: LeRobot's default pipelines (rename, batch,
device, normalise / unnormalise), as for ACT.

Normalisation follows ``config.normalization_mapping``: state and action are standardised with the
training data's statistics (stored with the processors in every checkpoint); images and
environment states pass through unchanged, since the world encoder normalises its own input.
Keys outside the config's features (the cached latents, the instruction) pass through untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig


def make_world_transformer_pre_post_processors(
    config: WorldTransformerConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
