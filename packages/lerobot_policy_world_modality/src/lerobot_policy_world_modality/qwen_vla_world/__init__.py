"""F+: a Qwen-VL backbone read at `<ACT_i>` tokens, with world memory and a chain-of-causation text loss."""

from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import QwenVLAWorldConfig

__all__ = ["QwenVLAWorldConfig"]
