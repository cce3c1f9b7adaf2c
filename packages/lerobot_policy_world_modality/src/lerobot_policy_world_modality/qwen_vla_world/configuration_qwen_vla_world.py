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

from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType

from lerobot_policy_world_modality.common import CurrentFrameChunkConfig, WorldMemoryConfig
from lerobot_policy_world_modality.errors import InputError
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
FINETUNE_MODES = ("lora", "frozen", "full")
TEXT_LOSS_MODES = ("joint_after_act", "separate")
WRIST_MODES = ("none", "concat")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
BACKBONE_INITS = ("pretrained", "random")
# torch.compile modes for the language model's decoder layers. "reduce-overhead" (CUDA graphs) is
# left out: one graph per layer call overwrites the previous layer's output buffer.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
CUDA_GRAPH_SCOPES = ("chunk", "off")  # what inference on CUDA replays from CUDA graphs (`cuda_graphs`)


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
    raise InputError(f"unknown backbone {name!r}.{hint} Valid backbones: {real}")


@PreTrainedConfig.register_subclass("qwen_vla_world")
@dataclass
class QwenVLAWorldConfig(CurrentFrameChunkConfig, WorldMemoryConfig, PreTrainedConfig):
    """F+: Qwen-VL + `<ACT_i>` action queries + world memory + optional chain-of-causation text loss.

    Experiments (docs/ARCHITECTURE.md, Experiment matrix): E0 ``use_world_module=False``; E1 ``world_memory_mode_train="zero"``;
    E2 world memory; E3 ``use_world_module=False, lambda_text>0``; E4 E2 + ``lambda_text>0`` (+ FLARE
    through ``lambda_world``). The world-memory fields (world module, latents, dataset keys, training
    recipes) are `WorldMemoryConfig`'s; the chunk (H = the number of `<ACT_i>` tokens), head and optimizer
    fields `CurrentFrameChunkConfig`'s.
    """

    # Backbone: a name of BACKBONES, loaded from a local folder holding that checkpoint.
    backbone: str = "qwen3_vl_4b_instruct"
    backbone_path: str | None = None
    backbone_dtype: str = "bfloat16"
    # "random": the architecture of the folder's config with random weights (benchmarks only).
    backbone_init: str = "pretrained"
    # Filled when the policy is built: digest of the folder's config and weight files; a checkpoint
    # refuses to load on top of another backbone.
    backbone_fingerprint: str | None = None
    # lora: LoRA on the language model's q/k/v/o; frozen: backbone frozen; full: every backbone weight trains (a backbone
    # trained from scratch, whose random frozen weights LoRA cannot make useful; float32 weights)
    finetune: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    # torch.compile each decoder layer of the language model (the layers share one compiled graph,
    # so compiling takes seconds, not minutes). At batch 1 the forward pass is bound by Python and
    # kernel launches; fused layers cut the launches (benchmarks/README.md has the measured latency).
    compile_model: bool = False
    compile_mode: str = "default"
    # Inference on CUDA replays each action chunk (backbone pass, memory read, head) from one CUDA graph: `chunk`
    # (Qwen3-VL backbones, not compiled; the eager actions within float tolerance on an H100, tests/test_cuda_graphs.py)
    # or `off` (eager). CPU and training are unchanged.
    cuda_graphs: str = "chunk"

    # The prompt (see prompt.py), stored so rollouts build exactly the training prompt.
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    prompt_version: int = PROMPT_VERSION
    act_token_ids: list[int] = field(default_factory=list)  # filled when the policy is built

    # Action head (`action_head`) on the <ACT_i> states, projected to this width.
    head_dim: int = 256
    use_proprio: bool = False  # state through a zero-initialised gated residual into the <ACT_i> states

    # World module (E2/E4), read into the <ACT_i> states of the backbone's hidden size.
    use_world_module: bool = True
    # The backbones' hidden sizes are 2048-4096: 8 heads keep each head 256-512 wide.
    cross_attn_heads: int = 8

    # Chain-of-causation text loss: CoC text per sample under `coc_key` (None = no label).
    lambda_text: float = 0.0
    text_loss_mode: str = "joint_after_act"
    coc_max_tokens: int = 64  # CoC tokens per sample (truncated / padded: fixed shapes)
    require_coc: bool = False
    coc_key: str = "coc_text"

    # The wrist camera (besides image_key, the main one).
    wrist_key: str | None = None
    wrist_mode: str = "none"  # concat: wrist image beside the main image (widths concatenated)

    optimizer_lr: float = 1e-4  # LoRA fine-tuning of a pretrained VLM: lower than the small family's

    world_baseline = "use_world_module=False"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.backbone = canonical_backbone(self.backbone)
        choices = {
            "finetune": FINETUNE_MODES,
            "text_loss_mode": TEXT_LOSS_MODES,
            "wrist_mode": WRIST_MODES,
            "backbone_dtype": BACKBONE_DTYPES,
            "backbone_init": BACKBONE_INITS,
            "compile_mode": COMPILE_MODES,
            "cuda_graphs": CUDA_GRAPH_SCOPES,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise InputError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.finetune == "full" and self.backbone_dtype != "float32":
            raise InputError(
                f"finetune='full' trains every backbone weight, which needs float32 weights (mixed precision computes "
                f"in lower precision): set backbone_dtype='float32', got {self.backbone_dtype!r}"
            )
        if self.prompt_version != PROMPT_VERSION:
            raise InputError(
                f"prompt_version {self.prompt_version} was written by another version of this policy "
                f"(this one builds version {PROMPT_VERSION}); retrain or use the matching version"
            )
        check_prompt_format(self.prompt_format)
        if self.coc_max_tokens < 1:
            raise InputError(f"coc_max_tokens must be >= 1, got {self.coc_max_tokens}")
        if self.wrist_mode == "concat" and not self.wrist_key:
            raise InputError("wrist_mode='concat' needs wrist_key (the dataset's wrist camera key)")
        if self.lambda_text < 0:
            raise InputError(f"lambda_text must be >= 0, got {self.lambda_text}")

    @property
    def uses_world_module(self) -> bool:
        return self.use_world_module

    @property
    def backbone_hub_id(self) -> str:
        return BACKBONES[self.backbone][0]

    @property
    def backbone_model_type(self) -> str:
        return BACKBONES[self.backbone][1]

    def validate_features(self) -> None:
        if self.backbone_path is None:
            raise InputError(
                f"backbone_path is not set: point it at a local folder holding {self.backbone_hub_id} "
                "(nothing is downloaded)"
            )
        if self.image_key is None or self.image_key not in self.input_features:
            raise InputError(
                f"image_key {self.image_key!r} must be one of the visual input features "
                f"{sorted(k for k, f in self.input_features.items() if f.type is FeatureType.VISUAL)}"
            )
        if self.wrist_mode == "concat" and self.wrist_key not in self.input_features:
            raise InputError(
                f"wrist key {self.wrist_key!r} is not among the input features {sorted(self.input_features)}"
            )
        if self.use_proprio and self.state_key not in self.input_features:
            raise InputError(
                f"use_proprio needs the state key {self.state_key!r} among the input features "
                f"{sorted(self.input_features)}"
            )
        if self.action_key not in self.output_features:
            raise InputError(
                f"action key {self.action_key!r} is not among the output features {sorted(self.output_features)}"
            )
        if self.use_world_module and (self.encoder_spec is None or self.latent_dim < 1):
            raise InputError(
                "the world module needs encoder_spec and latent_dim (the world latents it reads); "
                "set use_world_module=False for the E0/E3 baselines"
            )
