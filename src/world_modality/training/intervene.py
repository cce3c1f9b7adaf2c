"""Offline memory interventions: does a world-memory policy's action loss depend on the memory content?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world import WorldModule
from world_modality.data.check import DatasetKeys
from world_modality.training.checkpoint import check_inputs, load_checkpoint, run_label
from world_modality.training.data import LatentBatches, read_frame_table, training_images
from world_modality.training.trainer import validation_loss

READING = (
    "ratio > 1 for zero/random/shuffle/signflip: the policy relies on the memory's content; "
    "ratio < 1 for oracle: better predictions would help"
)


def intervene(
    checkpoint: str | Path,
    dataset: str | Path,
    latents: str | Path,
    modes: list[str],
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    keys: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Validation action loss under `pred` and each mode, and each mode's ratio to `pred`.

    Validation frames are the checkpoint's held-out episodes (recorded by `wm train`). ``keys``
    may name dataset keys; any that differ from the checkpoint's are refused.
    """
    ckpt = load_checkpoint(checkpoint, device)
    config = ckpt.policy.config
    if not config.uses_world_module:
        raise InputError(f"{ckpt.path} is {run_label(config)}, which reads no world memory")
    given = {k: v for k, v in (keys or {}).items() if v is not None}
    dataset_keys = DatasetKeys(
        state=given.get("state", config.state_key),
        action=given.get("action", config.action_key),
        instruction=given.get("instruction", config.instruction_key),
    )
    cache = LatentCache.load(latents, dataset=dataset)
    check_inputs(config, cache.spec, dataset_keys, f"wm intervene {ckpt.path}")
    val_episodes = ckpt.meta["val_episodes"]
    if not val_episodes:
        raise InputError(
            f"{ckpt.path} was trained without held-out episodes (--val-fraction 0); nothing to validate on"
        )
    images = training_images(dataset, config)
    data = LatentBatches(
        cache,
        read_frame_table(dataset, dataset_keys),
        dataset_keys,
        val_episodes,
        config.chunk_size,
        config.history_len,
        config.num_future,
        images,
    )
    losses = {
        mode: validation_loss(ckpt.policy, ckpt.preprocessor, data, batch_size, mode, seed)["action_loss"]
        for mode in ["pred", *modes]
    }
    return {
        "checkpoint": str(ckpt.path),
        "training_step": ckpt.meta["training_step"],
        "val_episodes": val_episodes,
        "val_frames": len(data),
        "gate": next(m for m in ckpt.policy.modules() if isinstance(m, WorldModule)).cross_attn.gate_strength().item(),
        "action_loss": losses,
        "ratio_to_pred": {mode: losses[mode] / losses["pred"] for mode in modes},
        "reading": READING,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"checkpoint {result['checkpoint']} (step {result['training_step']}, tanh(gate) {result['gate']:+.4f})",
        f"validation: {len(result['val_episodes'])} held-out episodes, {result['val_frames']} frames",
        f"{'mode':10s} {'action loss':>12s} {'ratio to pred':>14s}",
    ]
    for mode, loss in result["action_loss"].items():
        ratio = result["ratio_to_pred"].get(mode, 1.0)
        lines.append(f"{mode:10s} {loss:12.5f} {ratio:14.3f}")
    lines.append(f"reading: {result['reading']}")
    return "\n".join(lines)
