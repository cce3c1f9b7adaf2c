"""Configuration of the small world-transformer policy family (models A, B, B_cont, C, F).

The config is the self-describing part of a checkpoint (docs/ARCHITECTURE.md, Checkpoints): besides the
architecture it stores the encoder spec the world latents came from, the dataset keys the policy
was trained with and the instruction vocabulary, so a checkpoint can act without the training run.
"""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_policy_world_modality.common import CurrentFrameChunkConfig, WorldMemoryConfig
from lerobot_policy_world_modality.errors import InputError

# The world-latent batch keys have one home, shared by every policy family.
from lerobot_policy_world_modality.world.history import (  # noqa: F401  (re-exported)
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)

MODEL_TYPES = ("A", "B", "B_cont", "C", "F")
DEFAULT_MODEL_TYPE = "F"
TOKEN_MODEL_TYPES = ("B", "C")  # the models that predict (B) or also read (C) world tokens of a fitted codebook


@PreTrainedConfig.register_subclass("world_transformer")
@dataclass
class WorldTransformerConfig(CurrentFrameChunkConfig, WorldMemoryConfig, PreTrainedConfig):
    """A transformer over [latent history, state, instruction, (C: world token), H action queries].

    model_type:
        A: no world module (baseline). B: + auxiliary cross-entropy on the world tokens of
        z_{t+1..t+K}. B_cont: + auxiliary cosine loss on z_{t+1..t+K}. C: the current world token
        as an extra input token + B's loss. F: the action queries read Prophet-predicted futures
        through the shared WorldModule's zero-initialised gated cross-attention.
    Auxiliary/world losses are weighted by ``lambda_world``. B and C need ``codebook_size`` (the
    codebook's centroids are stored as weights, so tokens are assigned identically at rollout).
    The world-memory fields (world module, latents, dataset keys, training recipes) are
    `WorldMemoryConfig`'s; the chunk, head and optimizer fields `CurrentFrameChunkConfig`'s.
    """

    model_type: str = DEFAULT_MODEL_TYPE

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    dim_feedforward: int = 512
    dropout: float = 0.0

    # Instruction conditioning: a learned embedding per instruction of the vocabulary ``instructions``
    # (the training dataset's), or a frozen text encoder from a local folder.
    text_encoder_path: str | None = None

    codebook_size: int = 0  # world tokens of models B and C
    # The small family's Prophet is as wide as its trunk (d_model 128), so model F stays small beside A.
    prophet_dim: int = 128

    # For lerobot-train (which knows no latent cache): a `wm latents` cache of the training dataset.
    # The policy then fills encoder_spec, latent_dim, image_key and (when empty) the instruction
    # vocabulary from it and the dataset, and reads each batch's history and future latents from it
    # by the batch's global frame `index`. tokens_path: a `wm tokens` codebook (models B and C).
    latents_path: str | None = None
    tokens_path: str | None = None

    world_baseline = "model_type=A"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InputError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        super().__post_init__()
        if self.uses_tokens and self.codebook_size < 2 and self.tokens_path is None:
            raise InputError(
                f"model_type {self.model_type} needs a fitted world-token codebook: codebook_size >= 2, "
                "or tokens_path (a `wm tokens` folder)"
            )

    @property
    def uses_world_module(self) -> bool:
        return self.model_type == "F"

    @property
    def uses_tokens(self) -> bool:
        return self.model_type in TOKEN_MODEL_TYPES

    def validate_features(self) -> None:
        if self.encoder_spec is None or self.latent_dim < 1:
            raise InputError(
                "world_transformer needs encoder_spec and latent_dim (the world latents it reads); under "
                "lerobot-train pass --policy.latents_path=<a `wm latents` cache of the dataset>"
            )
        if self.state_key not in self.input_features:
            raise InputError(
                f"state key {self.state_key!r} is not among the input features {sorted(self.input_features)}"
            )
        if self.action_key not in self.output_features:
            raise InputError(
                f"action key {self.action_key!r} is not among the output features {sorted(self.output_features)}"
            )
        if not self.instructions and self.text_encoder_path is None:
            raise InputError("world_transformer needs an instruction vocabulary (instructions) or a text_encoder_path")


def features_for(
    state_key: str,
    state_dim: int,
    action_key: str,
    action_dim: int,
    source_key: str,
    source_shape: tuple[int, ...],
    source_is_image: bool,
) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """LeRobot input/output features: state, the world encoder's source observation, the action."""
    inputs = {
        state_key: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
        source_key: PolicyFeature(type=FeatureType.VISUAL if source_is_image else FeatureType.ENV, shape=source_shape),
    }
    return inputs, {action_key: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
