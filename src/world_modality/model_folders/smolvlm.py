"""Write a local SmolVLM2 folder (config, tokenizer, image/video processors) from code, for offline use.

LeRobot's SmolVLA reads everything about its VLM from ``vlm_model_name``: ``AutoConfig`` and
``AutoProcessor`` (whose tokenizer gives the image special-token ids) when building the model, and
``AutoTokenizer`` in its pre-processor. Nothing can be downloaded here, so ``write_smolvlm_folder``
writes a folder those three calls accept. Weights are never written: SmolVLA builds the VLM from the
config with random weights (``load_vlm_weights=False``); with ``load_vlm_weights=True`` it would need a
real checkpoint's ``model.safetensors`` in the folder.

- ``tiny``: a few narrow layers, for CPU tests (64 px vision tower, 4 text layers).
- ``small``: a backbone that trains from scratch here (no pretrained weights can be downloaded): ~23M
  parameters in the VLM, ~30M in a SmolVLA built on it. Its vision tower (4 layers, 256 wide) takes
  SmolVLA's default 512 px canvas in 32 px patches, so a 128 px MetaWorld frame, which SmolVLA scales up to
  512 px, is read in 8 px patches (16 x 16) and the connector's 2x pixel shuffle gives 64 image tokens;
  the text model is 384 wide with 8 layers (6 heads / 2 KV heads), and SmolVLA's action expert follows
  it (8 layers, 0.75 of its width). Real SmolVLM2 weights replace it by their folder
  (``vlm_model_name=DIR``, ``load_vlm_weights=true``) and nothing else.
- ``500m``: the SmolVLM2-500M-Video-Instruct architecture (SigLIP 768 x 12 layers at 512 px with
  16 px patches and a 4x pixel-shuffle connector; SmolLM2-360M text model: 960 wide, 32 layers,
  15 heads / 5 KV heads) with random weights, so benchmarks measure the real cost.

The tokenizer is a byte-level BPE trained in code on a small built-in corpus (so it tokenizes any
text) plus SmolVLM's special tokens (``<image>``, ``<fake_token_around_image>``, ``<global-img>``,
``<end_of_utterance>``, the image-grid tokens), registered under the names SmolVLM's processor and
LeRobot's SmolVLA look up (``tokenizer.fake_image_token_id``, ``tokenizer.global_image_token_id``).
"""

from __future__ import annotations

from pathlib import Path

from lerobot_policy_world_modality.errors import InputError
from world_modality.atomic_io import atomic_write_json

SIZES = ("tiny", "small", "500m")

# Named special tokens of SmolVLM2's tokenizer: the processor and SmolVLA read them as
# `tokenizer.<name>` and `tokenizer.<name>_id`.
NAMED_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "video_token": "<video>",
}
_GRID = 6  # image splitting produces up to 6 x 6 tiles named <row_i_col_j>
_CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_ARCHITECTURES = {
    "tiny": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 2048,
            "rope_theta": 100000.0,
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        "scale_factor": 2,
        "tokenizer_vocab": 600,
    },
    "small": {
        "text": {
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 8,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "max_position_embeddings": 2048,
            "rope_theta": 100000.0,
        },
        "vision": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 512,
            "patch_size": 32,
        },
        "scale_factor": 2,
        "tokenizer_vocab": 2000,
    },
    "500m": {
        "text": {
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "vocab_size": 49280,
        },
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        "scale_factor": 4,
        "tokenizer_vocab": 2000,
    },
}

# Enough text for the BPE to learn common English merges; any byte sequence stays encodable.
_CORPUS = (
    "pick up the object and place it at the goal position. open the drawer. close the drawer. "
    "push the puck to the goal. reach the target. press the button from the top. turn on the faucet. "
    "put the black bowl on the plate. put both the alphabet soup and the tomato sauce in the basket. "
    "open the top drawer and put the bowl inside. turn on the stove and put the moka pot on it. "
    "The robot arm moves the gripper to the left, then to the right, and lifts the red block slowly. "
    "What is in the image? Describe the scene in one sentence. 0 1 2 3 4 5 6 7 8 9 10 100 1000\n"
)


def _special_tokens() -> list[str]:
    grid = [f"<row_{r}_col_{c}>" for r in range(1, _GRID + 1) for c in range(1, _GRID + 1)]
    return _CONTROL_TOKENS + list(NAMED_SPECIAL_TOKENS.values()) + grid


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=dict(NAMED_SPECIAL_TOKENS),
        model_max_length=8192,
    )


def write_smolvlm_folder(path: str | Path, size: str = "tiny") -> Path:
    """Write a SmolVLM2 config + tokenizer + processors folder (no weights) and return its path.

    Loadable offline with ``AutoConfig``, ``AutoProcessor`` and ``AutoTokenizer``; pass it to SmolVLA
    as ``vlm_model_name`` (with ``load_vlm_weights=False``).
    """
    if size not in SIZES:
        raise InputError(f"unknown SmolVLM folder size {size!r}; expected one of {SIZES}")
    from transformers import SmolVLMConfig, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_smolvlm import SmolVLMImageProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    arch = _ARCHITECTURES[size]
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(arch["tokenizer_vocab"])
    vision = arch["vision"]
    image_side = vision["image_size"]
    # Image tokens per (sub-)image after the connector's pixel shuffle.
    image_seq_len = (image_side // vision["patch_size"]) ** 2 // arch["scale_factor"] ** 2
    processor_kwargs = {
        "do_resize": True,
        "size": {"longest_edge": 4 * image_side},
        "max_image_size": {"longest_edge": image_side},
        "do_image_splitting": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**processor_kwargs),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(**processor_kwargs),
        image_seq_len=image_seq_len,
    )
    processor.save_pretrained(out)

    # The real model's embedding table is larger than this tokenizer; never smaller.
    text = {**arch["text"], "vocab_size": max(arch["text"].get("vocab_size", 0), len(tokenizer))}
    config = SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "pad_token_id": tokenizer.pad_token_id,
            **text,
        },
        vision_config={"model_type": "smolvlm_vision", **vision},
        scale_factor=arch["scale_factor"],
        image_token_id=tokenizer.convert_tokens_to_ids(NAMED_SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.save_pretrained(out)
    # Provenance: what wrote the folder, so nobody mistakes it for a pretrained checkpoint.
    atomic_write_json(
        out / "world_modality_smolvlm.json", {"size": size, "weights": "none (random init by the consumer)"}
    )
    return out
