"""LeRobot policy plugin: importing this package registers the world-modality policy types.

LeRobot's ``register_third_party_plugins`` imports every installed distribution whose name starts with
``lerobot_policy_``; the config classes below register themselves with ``PreTrainedConfig``.
"""

from lerobot_policy_world_modality.world_transformer import WorldTransformerConfig

__all__ = ["WorldTransformerConfig"]
