"""SmolVLA-world (`--policy.type=smolvla_world`): LeRobot's SmolVLA with world memory in its action expert."""

from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig

__all__ = ["SmolVLAWorldConfig"]
