"""Configuration of the small world-transformer policy family (models A, B, B_cont, C, F).

The config is the self-describing part of a checkpoint (docs/ARCHITECTURE.md, Checkpoints): besides the
architecture it stores the encoder spec the world latents came from, the dataset keys the policy
was trained with and the instruction vocabulary, so a checkpoint can act without the training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

from lerobot_policy_world_modality.common import CurrentFrameChunkConfig

# The world-latent batch keys have one home, shared by every policy family.
from lerobot_policy_world_modality.world.history import (  # noqa: F401  (re-exported)
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)

MODEL_TYPES = ("A", "B", "B_cont", "C", "F")
ACTION_HEADS = ("mse", "flow")


@PreTrainedConfig.register_subclass("world_transformer")
@dataclass
class WorldTransformerConfig(CurrentFrameChunkConfig, PreTrainedConfig):
    """A transformer over [latent history, state, instruction, (C: world token), H action queries].

    model_type:
        A: no world module (baseline). B: + auxiliary cross-entropy on the world tokens of
        z_{t+1..t+K}. B_cont: + auxiliary cosine loss on z_{t+1..t+K}. C: the current world token
        as an extra input token + B's loss. F: the action queries read Prophet-predicted futures
        through the shared WorldModule's zero-initialised gated cross-attention.
    Auxiliary/world losses are weighted by ``lambda_world``. B and C need ``codebook_size`` (the
    codebook's centroids are stored as weights, so tokens are assigned identically at rollout).
    """

    model_type: str = "F"
    n_obs_steps: int = 1
    chunk_size: int = 16  # H
    n_action_steps: int = 8
    history_len: int = 4  # latent history tokens (z_{t-T+1..t})
    num_future: int = 4  # K: future offsets 1..K

    action_head: str = "mse"
    flow_steps: int = 10  # Euler steps of the rectified-flow head at inference

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    dim_feedforward: int = 512
    dropout: float = 0.0

    # Instruction conditioning: a learned embedding per instruction of this vocabulary (the
    # training dataset's instructions), or a frozen text encoder from a local folder.
    instructions: list[str] = field(default_factory=list)
    text_encoder_path: str | None = None

    # World module (model F) and auxiliary heads (B, B_cont, C).
    lambda_world: float = 1.0
    codebook_size: int = 0
    latent_dim: int = 0  # filled from the encoder spec
    prophet_dim: int = 128
    prophet_heads: int = 4
    prophet_layers: int = 2
    cross_attn_heads: int = 4
    prophet_delta: bool = False
    memory_source: str = "predicted"  # predicted | oracle | scheduled
    memory_schedule_start: int = 0
    memory_schedule_end: int = 0
    detach_prophet_for_policy: bool = False
    world_memory_mode_train: str = "pred"  # `zero` trains E1 (the capacity control)
    world_memory_mode_rollout: str = "pred"

    # Where the inputs come from. encoder_spec is EncoderSpec.to_dict() of the latents' encoder;
    # its camera_key is the observation the policy encodes online when a batch has no latents.
    encoder_spec: dict | None = None
    state_key: str = "observation.state"
    action_key: str = "action"
    instruction_key: str = "task"
    image_key: str | None = None  # the camera key of the dataset (None for the state encoder)
    # For lerobot-train (which knows no latent cache): a `wm latents` cache of the training dataset.
    # The policy then fills encoder_spec, latent_dim, image_key and (when empty) the instruction
    # vocabulary from it and the dataset, and reads each batch's history and future latents from it
    # by the batch's global frame `index`. tokens_path: a `wm tokens` codebook (models B and C).
    latents_path: str | None = None
    tokens_path: str | None = None

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            # Images and environment states go to the world encoder, which normalises them itself.
            "VISUAL": NormalizationMode.IDENTITY,
            "ENV": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_decay_steps: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in 1..chunk_size ({self.chunk_size})")
        if self.model_type in ("B", "C") and self.codebook_size < 2 and self.tokens_path is None:
            raise ValueError(f"model_type {self.model_type} needs a fitted world-token codebook: codebook_size >= 2, "
                             "or tokens_path (a `wm tokens` folder)")
        if self.history_len < 1 or self.num_future < 1 or self.flow_steps < 1:
            raise ValueError("history_len, num_future and flow_steps must be >= 1")

    @property
    def uses_world_module(self) -> bool:
        return self.model_type == "F"

    @property
    def uses_tokens(self) -> bool:
        return self.model_type in ("B", "C")

    @property
    def latent_source_key(self) -> str | None:
        """The observation key the world encoder reads at rollout (camera or environment state)."""
        return None if self.encoder_spec is None else self.encoder_spec["camera_key"]

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.optimizer_lr * 0.1,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    def validate_features(self) -> None:
        if self.encoder_spec is None or self.latent_dim < 1:
            raise ValueError("world_transformer needs encoder_spec and latent_dim (the world latents it reads); under "
                             "lerobot-train pass --policy.latents_path=<a `wm latents` cache of the dataset>")
        if self.state_key not in self.input_features:
            raise ValueError(f"state key {self.state_key!r} is not among the input features {sorted(self.input_features)}")
        if self.action_key not in self.output_features:
            raise ValueError(f"action key {self.action_key!r} is not among the output features {sorted(self.output_features)}")
        if not self.instructions and self.text_encoder_path is None:
            raise ValueError("world_transformer needs an instruction vocabulary (instructions) or a text_encoder_path")



def features_for(state_key: str, state_dim: int, action_key: str, action_dim: int, source_key: str,
                 source_shape: tuple[int, ...], source_is_image: bool) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """LeRobot input/output features: state, the world encoder's source observation, the action."""
    inputs = {
        state_key: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
        source_key: PolicyFeature(type=FeatureType.VISUAL if source_is_image else FeatureType.ENV, shape=source_shape),
    }
    return inputs, {action_key: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
