"""The small world-transformer policy family (models A, B, B_cont, C, F)."""

from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig

__all__ = ["WorldTransformerConfig"]
