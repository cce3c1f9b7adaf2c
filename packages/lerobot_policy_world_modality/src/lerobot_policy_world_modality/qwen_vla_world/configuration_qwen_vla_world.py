"""Configuration of F+ (`--policy.type=qwen_vla_world`): a Qwen-VL backbone read at `<ACT_i>` tokens.

The prompt `<image> <instruction> <ACT_0> ... <ACT_{H-1}>` goes through the VLM once; the last-layer
hidden states at the H `<ACT_i>` positions are the action queries. They optionally receive the
state (zero-initialised gated residual) and the world memory (the shared `WorldModule`: Prophet +
zero-initialised gated cross-attention, into these states only), then an action head (`mse`, or
`flow`: rectified flow integrated in `flow_steps` Euler steps). No text is decoded on the action path.

The config is the self-describing part of a checkpoint (docs/ARCHITECTURE.md, Checkpoints): backbone name, the
backbone folder and its fingerprint, the prompt format and version, the `<ACT_i>` token ids, the
dataset keys and the encoder spec of the world latents. Weights (LoRA adapter incl. the `<ACT_i>`
embedding rows, heads, world module) and normalisation statistics are stored beside it.

World latents come from the batch (`observation.world_latents`, the cached fast path of `wm train`)
or are encoded online from the camera (rollouts, through `observe`). Under plain `lerobot-train`
(no latent cache) each training frame is encoded online on its own: a history of one latent (the
rest masked), and no future latents, hence no world (FLARE) loss and no oracle memory source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.configs.types import FeatureType
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

from lerobot_policy_world_modality.common import CurrentFrameChunkConfig
from lerobot_policy_world_modality.qwen_vla_world.prompt import (
    DEFAULT_PROMPT_FORMAT,
    PROMPT_VERSION,
    check_prompt_format,
)

# Backbone names -> the published checkpoints (Hugging Face ids) and their model_type.
BACKBONES: dict[str, tuple[str, str]] = {
    "qwen3_vl_2b_instruct": ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"),
    "qwen3_vl_4b_instruct": ("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl"),
    "qwen3_vl_8b_instruct": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
    "qwen2_5_vl_3b_instruct": ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
}
FINETUNE_MODES = ("lora", "frozen")
ACTION_HEADS = ("mse", "flow")
TEXT_LOSS_MODES = ("joint_after_act", "separate")
WRIST_MODES = ("none", "concat")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
BACKBONE_INITS = ("pretrained", "random")
# torch.compile modes for the language model's decoder layers. "reduce-overhead" (CUDA graphs) is
# left out: one graph per layer call overwrites the previous layer's output buffer.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def canonical_backbone(name: str) -> str:
    """A backbone name in any spelling ("Qwen3-VL-4B-Instruct", "qwen3_vl_4b_instruct") -> its key.

    "Qwen3-VL-3B" does not exist (Qwen3-VL comes in 2B, 4B, 8B and 32B); it and any other unknown
    name are errors listing the real ones.
    """
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if key in BACKBONES:
        return key
    real = ", ".join(f"{k} ({hub})" for k, (hub, _) in BACKBONES.items())
    hint = " Qwen3-VL has no 3B model (sizes: 2B, 4B, 8B, 32B);" if key.startswith("qwen3_vl_3b") else ""
    raise ValueError(f"unknown backbone {name!r}.{hint} Valid backbones: {real}")


@PreTrainedConfig.register_subclass("qwen_vla_world")
@dataclass
class QwenVLAWorldConfig(CurrentFrameChunkConfig, PreTrainedConfig):
    """F+: Qwen-VL + `<ACT_i>` action queries + world memory + optional chain-of-causation text loss.

    Experiments (docs/ARCHITECTURE.md, Experiment matrix): E0 ``use_world_module=False``; E1 ``world_memory_mode_train="zero"``;
    E2 world memory; E3 ``use_world_module=False, lambda_text>0``; E4 E2 + ``lambda_text>0`` (+ FLARE
    through ``lambda_world``).
    """

    n_obs_steps: int = 1
    chunk_size: int = 16  # H: number of <ACT_i> tokens and of actions per chunk
    n_action_steps: int = 8

    # Backbone: a name of BACKBONES, loaded from a local folder holding that checkpoint.
    backbone: str = "qwen3_vl_4b_instruct"
    backbone_path: str | None = None
    backbone_dtype: str = "bfloat16"
    # "random": the architecture of the folder's config with random weights (benchmarks only).
    backbone_init: str = "pretrained"
    # Filled when the policy is built: digest of the folder's config and weight files; a checkpoint
    # refuses to load on top of another backbone.
    backbone_fingerprint: str | None = None
    finetune: str = "lora"  # lora: LoRA on the language model's q/k/v/o; frozen: backbone frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    # torch.compile each decoder layer of the language model (the layers share one compiled graph,
    # so compiling takes seconds, not minutes). At batch 1 the forward pass is bound by Python and
    # kernel launches; fused layers cut the launches (benchmarks/README.md has the measured latency).
    compile_model: bool = False
    compile_mode: str = "default"

    # The prompt (see prompt.py), stored so rollouts build exactly the training prompt.
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    prompt_version: int = PROMPT_VERSION
    act_token_ids: list[int] = field(default_factory=list)  # filled when the policy is built

    # Action head on the <ACT_i> states.
    action_head: str = "mse"
    flow_steps: int = 10
    head_dim: int = 256
    use_proprio: bool = False  # state through a zero-initialised gated residual into the <ACT_i> states

    # World module (E2/E4); d_model is the backbone's hidden size.
    use_world_module: bool = True
    history_len: int = 4  # T
    num_future: int = 4  # K
    latent_dim: int = 0  # filled from the encoder spec
    lambda_world: float = 1.0
    prophet_dim: int = 256
    prophet_heads: int = 4
    prophet_layers: int = 2
    cross_attn_heads: int = 8
    prophet_delta: bool = False
    memory_source: str = "predicted"  # predicted | oracle | scheduled
    memory_schedule_start: int = 0
    memory_schedule_end: int = 0
    detach_prophet_for_policy: bool = False
    world_memory_mode_train: str = "pred"
    world_memory_mode_rollout: str = "pred"

    # Chain-of-causation text loss: CoC text per sample under `coc_key` (None = no label).
    lambda_text: float = 0.0
    text_loss_mode: str = "joint_after_act"
    coc_max_tokens: int = 64  # CoC tokens per sample (truncated / padded: fixed shapes)
    require_coc: bool = False
    coc_key: str = "coc_text"

    # Dataset keys and world-latent encoder.
    encoder_spec: dict | None = None
    state_key: str = "observation.state"
    action_key: str = "action"
    instruction_key: str = "task"
    image_key: str | None = None
    wrist_key: str | None = None
    wrist_mode: str = "none"  # concat: wrist image beside the main image (widths concatenated)
    instructions: list[str] = field(default_factory=list)  # informative only: the VLM reads any text

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            # Images go to the Qwen-VL image processor (and the world encoder), which normalise them.
            "VISUAL": NormalizationMode.IDENTITY,
            "ENV": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    optimizer_lr: float = 1e-4
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_decay_steps: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        self.backbone = canonical_backbone(self.backbone)
        choices = {"finetune": FINETUNE_MODES, "action_head": ACTION_HEADS, "text_loss_mode": TEXT_LOSS_MODES,
                   "wrist_mode": WRIST_MODES, "backbone_dtype": BACKBONE_DTYPES, "backbone_init": BACKBONE_INITS,
                   "compile_mode": COMPILE_MODES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.prompt_version != PROMPT_VERSION:
            raise ValueError(f"prompt_version {self.prompt_version} was written by another version of this policy "
                             f"(this one builds version {PROMPT_VERSION}); retrain or use the matching version")
        check_prompt_format(self.prompt_format)
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in 1..chunk_size ({self.chunk_size})")
        if self.history_len < 1 or self.num_future < 1 or self.flow_steps < 1 or self.coc_max_tokens < 1:
            raise ValueError("history_len, num_future, flow_steps and coc_max_tokens must be >= 1")
        if self.wrist_mode == "concat" and not self.wrist_key:
            raise ValueError("wrist_mode='concat' needs wrist_key (the dataset's wrist camera key)")
        if self.lambda_text < 0 or self.lambda_world < 0:
            raise ValueError("lambda_text and lambda_world must be >= 0")

    @property
    def uses_world_module(self) -> bool:
        return self.use_world_module

    @property
    def backbone_hub_id(self) -> str:
        return BACKBONES[self.backbone][0]

    @property
    def backbone_model_type(self) -> str:
        return BACKBONES[self.backbone][1]

    @property
    def latent_source_key(self) -> str | None:
        """The observation key the world encoder reads at rollout."""
        return None if self.encoder_spec is None else self.encoder_spec["camera_key"]

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay,
                           grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr, decay_lr=self.optimizer_lr * 0.1,
            num_warmup_steps=self.scheduler_warmup_steps, num_decay_steps=self.scheduler_decay_steps,
        )

    def validate_features(self) -> None:
        if self.backbone_path is None:
            raise ValueError(f"backbone_path is not set: point it at a local folder holding {self.backbone_hub_id} "
                             "(nothing is downloaded)")
        if self.image_key is None or self.image_key not in self.input_features:
            raise ValueError(f"image_key {self.image_key!r} must be one of the visual input features "
                             f"{sorted(k for k, f in self.input_features.items() if f.type is FeatureType.VISUAL)}")
        if self.wrist_mode == "concat" and self.wrist_key not in self.input_features:
            raise ValueError(f"wrist key {self.wrist_key!r} is not among the input features {sorted(self.input_features)}")
        if self.use_proprio and self.state_key not in self.input_features:
            raise ValueError(f"use_proprio needs the state key {self.state_key!r} among the input features "
                             f"{sorted(self.input_features)}")
        if self.action_key not in self.output_features:
            raise ValueError(f"action key {self.action_key!r} is not among the output features {sorted(self.output_features)}")
        if self.use_world_module and (self.encoder_spec is None or self.latent_dim < 1):
            raise ValueError("the world module needs encoder_spec and latent_dim (the world latents it reads); "
                             "set use_world_module=False for the E0/E3 baselines")

