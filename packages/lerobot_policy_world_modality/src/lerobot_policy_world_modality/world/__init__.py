"""The shared world module: one home for Prophet, gated memory injection, memory modes and losses.

Mask convention throughout: boolean, True = valid (real data), False = padding / absent.
"""

from lerobot_policy_world_modality.world.gated_cross_attention import GatedCrossAttention, PreparedMemory
from lerobot_policy_world_modality.world.losses import total_loss, world_cosine_loss
from lerobot_policy_world_modality.world.memory import (
    MemoryMode,
    MemorySource,
    MemorySourceSchedule,
    apply_memory_mode,
)
from lerobot_policy_world_modality.world.prophet import Prophet, ProphetConfig
from lerobot_policy_world_modality.world.world_module import (
    WorldModule,
    WorldModuleConfig,
    WorldOutputs,
    scalars_to_floats,
)

__all__ = [
    "GatedCrossAttention",
    "MemoryMode",
    "MemorySource",
    "MemorySourceSchedule",
    "PreparedMemory",
    "Prophet",
    "ProphetConfig",
    "WorldModule",
    "WorldModuleConfig",
    "WorldOutputs",
    "apply_memory_mode",
    "scalars_to_floats",
    "total_loss",
    "world_cosine_loss",
]
