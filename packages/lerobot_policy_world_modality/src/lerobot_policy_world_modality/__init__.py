"""LeRobot policy plugin: importing this package registers the world-modality policy types.

LeRobot's ``register_third_party_plugins`` imports every installed distribution whose name starts with
``lerobot_policy_``; the config classes below register themselves with ``PreTrainedConfig``. That import comes
before LeRobot makes an env or a dataset, so it is also where LeRobot's own tools (`lerobot-eval`,
`lerobot-train`) get the plugin's headless rendering backend and a one-line video-decoder fallback.
"""

from lerobot_policy_world_modality.rendering import choose_before_mujoco_import
from lerobot_policy_world_modality.video_decoding import say_decoder_fallback_once

# First, so that nothing imported below can load MuJoCo or choose a decoder before them.
choose_before_mujoco_import()
say_decoder_fallback_once()

from lerobot.configs import PreTrainedConfig

from lerobot_policy_world_modality.qwen_vla_world import QwenVLAWorldConfig
from lerobot_policy_world_modality.smolvla_world import SmolVLAWorldConfig
from lerobot_policy_world_modality.world_transformer import WorldTransformerConfig

# The policy types this plugin registers (`--policy.type`, `wm train --policy`), in the pipeline's order.
POLICY_TYPES = tuple(
    PreTrainedConfig.get_choice_name(c) for c in (WorldTransformerConfig, SmolVLAWorldConfig, QwenVLAWorldConfig)
)

__all__ = ["POLICY_TYPES", "QwenVLAWorldConfig", "SmolVLAWorldConfig", "WorldTransformerConfig"]
