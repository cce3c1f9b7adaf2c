"""Pre/post processors of SmolVLA-world: LeRobot's SmolVLA pipelines, the task tokenised once per distinct task.

Rename, batch, newline + tokenise the task with the tokenizer in ``vlm_model_name`` (LeRobot's tokenizer step
with the same settings, remembering its recent tasks: `InstructionTokenizerStep`, the same tokens), device,
normalise (state/action mean-std, images as they are) and unnormalise the actions. The world-latent
keys (``observation.world_*``) are not features of the config, so they pass through untouched; the
world encoder normalises its own input.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, TokenizerProcessorStep

from lerobot_policy_world_modality.common import InstructionTokenizerStep
from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig


def make_smolvla_world_pre_post_processors(
    config: SmolVLAWorldConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    preprocessor, postprocessor = make_smolvla_pre_post_processors(config, dataset_stats)
    preprocessor.steps = [
        InstructionTokenizerStep.replacing(step) if isinstance(step, TokenizerProcessorStep) else step
        for step in preprocessor.steps
    ]
    return preprocessor, postprocessor
