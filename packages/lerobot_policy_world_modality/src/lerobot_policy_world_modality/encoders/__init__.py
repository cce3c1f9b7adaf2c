"""World encoders: specs, the registry, the pretrained/state/learned encoders and rollout-time encoding."""

from lerobot_policy_world_modality.encoders.base import DEFAULT_CAMERA_KEY, ImageEncoder, WorldEncoder
from lerobot_policy_world_modality.encoders.hf import Dinov2Encoder, VJEPA2Encoder
from lerobot_policy_world_modality.encoders.learned import LearnedEncoder, train_learned_encoder
from lerobot_policy_world_modality.encoders.online import OnlineEncoder, encode_episode, window_frames, window_indices
from lerobot_policy_world_modality.encoders.registry import ENCODERS, build_encoder
from lerobot_policy_world_modality.encoders.spec import EncoderSpec
from lerobot_policy_world_modality.encoders.state import StateEncoder, fit_state_encoder

__all__ = [
    "DEFAULT_CAMERA_KEY",
    "ENCODERS",
    "Dinov2Encoder",
    "EncoderSpec",
    "ImageEncoder",
    "LearnedEncoder",
    "OnlineEncoder",
    "StateEncoder",
    "VJEPA2Encoder",
    "WorldEncoder",
    "build_encoder",
    "encode_episode",
    "fit_state_encoder",
    "train_learned_encoder",
    "window_frames",
    "window_indices",
]
