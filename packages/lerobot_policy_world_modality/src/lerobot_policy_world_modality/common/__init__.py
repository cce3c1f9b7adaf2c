"""What the plugin's policy families share: the world-memory config and policy mixin, chunked actions, heads,
instructions tokenised once, CUDA-graph replay of an inference step."""

from lerobot_policy_world_modality.common.chunks import ACTION_HEADS, CurrentFrameChunkConfig, QueuedActions
from lerobot_policy_world_modality.common.cuda_graphs import ForgetsGraphs, GraphedStep, check_graph_scope
from lerobot_policy_world_modality.common.heads import ActionHeads, FlowHead
from lerobot_policy_world_modality.common.instruction_tokens import CachedTokenizer, InstructionTokenizerStep
from lerobot_policy_world_modality.common.world_memory import (
    INSTRUCTION_BATCH_KEY,
    SCHEDULED_ORACLE_SHARE,
    WorldMemoryConfig,
    WorldMemoryPolicy,
)

__all__ = [
    "ACTION_HEADS",
    "INSTRUCTION_BATCH_KEY",
    "SCHEDULED_ORACLE_SHARE",
    "ActionHeads",
    "CachedTokenizer",
    "CurrentFrameChunkConfig",
    "FlowHead",
    "ForgetsGraphs",
    "GraphedStep",
    "InstructionTokenizerStep",
    "QueuedActions",
    "WorldMemoryConfig",
    "WorldMemoryPolicy",
    "check_graph_scope",
]
