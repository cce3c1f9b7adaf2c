"""Qwen-VL model folders written in code: the published architectures, a small one that trains here, or tiny
ones for tests.

`write_qwen_vl_folder` writes a Hugging Face folder (config.json, processor/tokenizer files, and for the
random sizes ``tiny`` and ``small`` random weights) that `AutoProcessor.from_pretrained` and
`AutoModelForImageTextToText.from_pretrained` load offline. Nothing is downloaded: the full sizes
hard-code the architecture values of the published Instruct checkpoints, so a GPU benchmark can
instantiate the real architecture with random weights; the tokenizer is a byte-level BPE built
with the `tokenizers` library (its merges learned from the MetaWorld task descriptions), with
Qwen-VL's special tokens and a ChatML chat template. Token ids therefore differ from the released
tokenizer (the config's special-token ids follow this tokenizer); the vocabulary size of a full size
stays the published one, so embedding and LM-head shapes are real.

``small`` (Qwen3-VL only) is a backbone that trains from scratch here, where no pretrained weights can be
downloaded: ~26M parameters, a 384-wide text model of 8 layers (6 heads / 2 KV heads) and a 4-layer, 256-wide
vision tower with the published patching (16 px patches, 2x2 merge) and image processing, so a 128 px frame,
which the released processor scales to 256 px, gives 64 image tokens, as the released models' processor gives
them. Its folder holds random weights (seeded), so real weights replace it by their folder
(``backbone_path=DIR``) and nothing else.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

from lerobot_policy_world_modality.errors import InputError

BACKBONES = ("qwen3_vl", "qwen2_5_vl")
SIZES = {"qwen3_vl": ("tiny", "small", "2b", "4b", "8b"), "qwen2_5_vl": ("tiny", "3b")}
# Sizes of random architectures (not published ones): their folders hold random weights and their own vocabulary.
RANDOM_SIZES = ("tiny", "small")

# Qwen-VL's special tokens, in the released vocabulary's order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML with image/video content items, as the Qwen-VL Instruct templates render a plain chat.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3_VL_TEXT_COMMON = {
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-6,
    "vocab_size": 151936,
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000,
        "mrope_interleaved": True,
        "mrope_section": [24, 20, 20],
    },
}
_QWEN3_VL_SMALL_VISION = {
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_heads": 16,
    "deepstack_visual_indexes": [5, 11, 17],
}
_QWEN3_VL_LARGE_VISION = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "deepstack_visual_indexes": [8, 16, 24],
}
_QWEN3_VL_VISION_COMMON = {
    "hidden_act": "gelu_pytorch_tanh",
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 2304,
    "in_channels": 3,
}

# Architecture values of the published checkpoints (Qwen/Qwen3-VL-{2B,4B,8B}-Instruct,
# Qwen/Qwen2.5-VL-3B-Instruct config.json); `out_hidden_size` equals the text hidden size.
ARCHITECTURES: dict[tuple[str, str], dict] = {
    ("qwen3_vl", "2b"): {
        "text": {
            **_QWEN3_VL_TEXT_COMMON,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
        },
        "vision": {**_QWEN3_VL_VISION_COMMON, **_QWEN3_VL_SMALL_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    ("qwen3_vl", "4b"): {
        "text": {
            **_QWEN3_VL_TEXT_COMMON,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
        "vision": {**_QWEN3_VL_VISION_COMMON, **_QWEN3_VL_SMALL_VISION, "out_hidden_size": 2560},
        "tie_word_embeddings": True,
    },
    ("qwen3_vl", "8b"): {
        "text": {
            **_QWEN3_VL_TEXT_COMMON,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
        "vision": {**_QWEN3_VL_VISION_COMMON, **_QWEN3_VL_LARGE_VISION, "out_hidden_size": 4096},
        "tie_word_embeddings": False,
    },
    # Tiny: mrope_section sums to head_dim / 2, deepstack indexes < vision depth, out_hidden_size =
    # text hidden size; small position table (a 16x16 patch grid) and few patches per image.
    ("qwen3_vl", "tiny"): {
        "text": {
            **_QWEN3_VL_TEXT_COMMON,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "rope_parameters": {**_QWEN3_VL_TEXT_COMMON["rope_parameters"], "mrope_section": [4, 2, 2]},
        },
        "vision": {
            **_QWEN3_VL_VISION_COMMON,
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "deepstack_visual_indexes": [1],
            "out_hidden_size": 64,
            "num_position_embeddings": 256,
        },
        "tie_word_embeddings": True,
    },
    # Small: trains from scratch in minutes (module docstring); mrope_section sums to head_dim / 2.
    ("qwen3_vl", "small"): {
        "text": {
            **_QWEN3_VL_TEXT_COMMON,
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 8,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "max_position_embeddings": 4096,
            "rope_parameters": {**_QWEN3_VL_TEXT_COMMON["rope_parameters"], "mrope_section": [12, 10, 10]},
        },
        "vision": {
            **_QWEN3_VL_VISION_COMMON,
            "depth": 4,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_heads": 4,
            "deepstack_visual_indexes": [1, 2],
            "out_hidden_size": 384,
            "num_position_embeddings": 576,
        },
        "tie_word_embeddings": True,
    },
    ("qwen2_5_vl", "3b"): {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "vocab_size": 151936,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 70,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "hidden_act": "silu",
            "in_channels": 3,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
        "tie_word_embeddings": True,
    },
}
ARCHITECTURES[("qwen2_5_vl", "tiny")] = {
    "text": {
        **ARCHITECTURES[("qwen2_5_vl", "3b")]["text"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
    },
    "vision": {
        **ARCHITECTURES[("qwen2_5_vl", "3b")]["vision"],
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    },
    "tie_word_embeddings": True,
}

# Image preprocessing of the released processors (pixel bounds in the processor's `size`).
_IMAGE_PROCESSING = {
    "qwen3_vl": {
        "patch_size": 16,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    },
    "qwen2_5_vl": {
        "patch_size": 14,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    },
}
# Tiny folders keep small images small (a 64x64 frame -> 4 image tokens).
_TINY_SHORTEST_EDGE = 32 * 32
_BPE_VOCAB_SIZE = 1024


def _training_corpus() -> list[str]:
    """English robot instructions to learn BPE merges from: LeRobot's MetaWorld task descriptions."""
    from importlib.resources import files

    descriptions = json.loads((files("lerobot.envs") / "metaworld_config.json").read_text())["TASK_DESCRIPTIONS"]
    return sorted(descriptions.values()) + ["system", "user", "assistant"]


def build_tokenizer():
    """A byte-level BPE `Qwen2Tokenizer` with Qwen-VL's special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_training_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, errors="replace", model_max_length=131072)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:]]}
    )
    tokenizer.add_tokens([AddedToken("<|endoftext|>", special=True)], special_tokens=True)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def model_config(backbone: str, size: str, tokenizer):
    """The transformers config of (backbone, size); special-token ids follow ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    _check(backbone, size)
    arch = deepcopy(ARCHITECTURES[(backbone, size)])
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    text = arch["text"]
    if size in RANDOM_SIZES:
        text["vocab_size"] = len(tokenizer)
    text.update(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text["tie_word_embeddings"] = arch["tie_word_embeddings"]
    config_class = Qwen3VLConfig if backbone == "qwen3_vl" else Qwen2_5_VLConfig
    config = config_class(
        text_config=text, vision_config=arch["vision"], tie_word_embeddings=arch["tie_word_embeddings"], **ids
    )
    config.architectures = [config_class.__name__.removesuffix("Config") + "ForConditionalGeneration"]
    return config


def build_processor(backbone: str, size: str, tokenizer):
    """The Qwen-VL processor (image processor + tokenizer [+ video processor]) of (backbone, size)."""
    from transformers import Qwen2VLImageProcessor

    _check(backbone, size)
    image_kwargs = deepcopy(_IMAGE_PROCESSING[backbone])
    if size == "tiny":
        image_kwargs["size"]["shortest_edge"] = _TINY_SHORTEST_EDGE
    image_processor = Qwen2VLImageProcessor(merge_size=2, temporal_patch_size=2, **image_kwargs)
    if backbone == "qwen3_vl":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),
            chat_template=CHAT_TEMPLATE,
        )
    from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def write_qwen_vl_folder(
    path: str | Path, backbone: str = "qwen3_vl", size: str = "tiny", *, weights: bool | None = None, seed: int = 0
) -> Path:
    """Write a loadable Qwen-VL folder; returns its path.

    ``weights`` (default: for the random sizes, `RANDOM_SIZES`) also writes random weights (model.safetensors);
    without them, instantiate the model from the config (``AutoModelForImageTextToText.from_config``).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    _check(backbone, size)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = model_config(backbone, size, tokenizer)
    build_processor(backbone, size, tokenizer).save_pretrained(path)
    if weights if weights is not None else size in RANDOM_SIZES:
        torch.manual_seed(seed)
        AutoModelForImageTextToText.from_config(config).save_pretrained(path)
    else:
        config.save_pretrained(path)
    return path


def _check(backbone: str, size: str) -> None:
    if backbone not in SIZES:
        raise InputError(f"unknown Qwen-VL backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if size not in SIZES[backbone]:
        raise InputError(
            f"{backbone} has no size {size!r}; valid: {', '.join(SIZES[backbone])} "
            f"(Qwen3-VL comes in 2B/4B/8B, Qwen2.5-VL here in 3B; 'small' trains from scratch, 'tiny' is for tests)"
        )
