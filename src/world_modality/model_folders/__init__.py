"""Hugging Face model folders written in code (configs, tokenizers, processors) for offline use and tests."""

from __future__ import annotations

from pathlib import Path

from lerobot_policy_world_modality.errors import InputError

# Backbone folders with random weights that a matrix writes itself (`backbones:` entries with `write:`): the folder's
# model_type -> the sizes meant for training from scratch (`small`) and for tests (`tiny`).
RANDOM_BACKBONES = {"smolvlm": ("tiny", "small"), "qwen3_vl": ("tiny", "small"), "qwen2_5_vl": ("tiny",)}


def write_random_backbone(model_type: str, size: str, out: str | Path) -> Path:
    """Write a random-initialised backbone folder of ``model_type`` and ``size`` (deterministic: the same files on
    every machine) into ``out``."""
    if size not in RANDOM_BACKBONES.get(model_type, ()):
        known = "; ".join(f"{t}: {', '.join(sizes)}" for t, sizes in RANDOM_BACKBONES.items())
        raise InputError(f"no random {model_type} backbone of size {size!r} (random backbones: {known})")
    if model_type == "smolvlm":
        from world_modality.model_folders.smolvlm import write_smolvlm_folder

        return write_smolvlm_folder(out, size)
    from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

    return write_qwen_vl_folder(out, model_type, size)
