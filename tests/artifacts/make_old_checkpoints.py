"""Write the small checkpoints of `tests/artifacts/checkpoints/` and their reference outputs.

Run once with the code whose checkpoints must keep loading (the commit is named in the README beside
this file): ``.venv/bin/python tests/artifacts/make_old_checkpoints.py``. `tests/test_old_checkpoints.py`
loads them with today's code and reproduces the outputs. Everything is built offline and tiny; the
world gate is opened (0.7) so the world-module weights take part in the outputs.

Per family, a folder with the policy's ``save_pretrained`` output, ``inputs.safetensors`` (a fixed
batch and the flow noise), ``inputs.json`` (the batch's strings) and ``reference.json`` (the outputs).
The SmolVLM folder the smolvla_world checkpoint was built on is kept beside it (config and tokenizer,
no weights: the checkpoint holds them); the Qwen-VL backbone (0.9 MB of random weights) is not kept,
since `write_qwen_vl_folder("tiny", seed=0)` rewrites it bit for bit and the checkpoint's backbone
fingerprint checks that it did.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent / "checkpoints"
STATE, ENV, CAMERA, ACTION = (
    "observation.state",
    "observation.environment_state",
    "observation.images.corner2",
    "action",
)
STATE_DIM, ENV_DIM, ACTION_DIM, CHUNK, T, K, BATCH = 4, 6, 4, 4, 3, 2, 3
TASKS = ["reach the goal", "pick up the puck", "open the drawer"]
LATENTS = "observation.world_latents"


def encoder_spec() -> dict:
    from lerobot_policy_world_modality.encoders import EncoderSpec

    return EncoderSpec(
        name="state",
        checkpoint_path=None,
        config_hash="artifact",
        camera_key=ENV,
        input_size=None,
        pooling=None,
        output_dim=ENV_DIM,
    ).to_dict()


def world_batch(seed: int) -> dict[str, torch.Tensor]:
    """History (the first sample's oldest entry is padding), futures (one masked), state, action, camera."""
    g = torch.Generator().manual_seed(seed)
    return {
        STATE: torch.randn(BATCH, STATE_DIM, generator=g),
        ENV: torch.randn(BATCH, ENV_DIM, generator=g),
        CAMERA: torch.rand(BATCH, 3, 32, 32, generator=g),
        ACTION: torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g),
        "action_is_pad": torch.tensor([[False, False, False, True]] + [[False] * CHUNK] * (BATCH - 1)),
        LATENTS: torch.randn(BATCH, T, ENV_DIM, generator=g),
        "observation.world_latents_mask": torch.tensor([[False, True, True]] + [[True] * T] * (BATCH - 1)),
        "observation.world_future": torch.randn(BATCH, K, ENV_DIM, generator=g),
        "observation.world_future_mask": torch.tensor([[True, False]] + [[True] * K] * (BATCH - 1)),
    }


def features(camera: bool) -> tuple[dict, dict]:
    inputs = {STATE: PolicyFeature(FeatureType.STATE, (STATE_DIM,)), ENV: PolicyFeature(FeatureType.ENV, (ENV_DIM,))}
    if camera:
        inputs[CAMERA] = PolicyFeature(FeatureType.VISUAL, (3, 32, 32))
    return inputs, {ACTION: PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}


def outputs(policy, batch: dict, noise: torch.Tensor | None) -> dict:
    """Action chunks under `pred` and `zero` memory, and the eval-mode training losses (seeded)."""
    policy.eval()
    extra = {} if noise is None else {"noise": noise}
    result = {}
    for mode in ("pred", "zero"):
        torch.manual_seed(0)
        result[f"chunk_{mode}"] = policy.predict_action_chunk(dict(batch), memory_mode=mode, **extra).tolist()
    torch.manual_seed(0)
    with torch.no_grad():
        _, logs = policy.forward(
            dict(batch), **({} if noise is None else {"noise": noise, "time": torch.full((BATCH,), 0.5)})
        )
    result["losses"] = {k: logs[k] for k in ("loss", "action_loss", "world_loss")}
    result["train_step"] = int(policy.train_step)
    return result


def save(folder: Path, policy, batch: dict, noise: torch.Tensor | None = None) -> None:
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    strings = {k: v for k, v in batch.items() if not isinstance(v, torch.Tensor)}
    reference = outputs(policy, batch, noise)
    policy.save_pretrained(folder)
    save_file({**tensors, **({} if noise is None else {"noise": noise})}, str(folder / "inputs.safetensors"))
    (folder / "inputs.json").write_text(json.dumps(strings, indent=1) + "\n")
    (folder / "reference.json").write_text(json.dumps(reference) + "\n")


def open_gate_and_count(policy, world, steps: int = 3) -> None:
    with torch.no_grad():
        world.cross_attn.gate.fill_(0.7)
    policy.train_step.fill_(steps)


def world_transformer() -> None:
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    inputs, outputs_ = features(camera=False)
    config = WorldTransformerConfig(
        model_type="F",
        action_head="flow",
        flow_steps=3,
        chunk_size=CHUNK,
        n_action_steps=2,
        history_len=T,
        num_future=K,
        d_model=16,
        n_heads=2,
        n_layers=1,
        dim_feedforward=32,
        prophet_dim=16,
        prophet_heads=2,
        prophet_layers=1,
        cross_attn_heads=2,
        latent_dim=ENV_DIM,
        encoder_spec=encoder_spec(),
        instructions=TASKS,
        input_features=inputs,
        output_features=outputs_,
        device="cpu",
    )
    torch.manual_seed(0)
    policy = WorldTransformerPolicy(config)
    open_gate_and_count(policy, policy.world)
    batch = {k: v for k, v in world_batch(1).items() if k != CAMERA} | {"task": TASKS}
    save(OUT / "world_transformer", policy, batch)


def smolvla_world() -> None:
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
    from transformers import AutoTokenizer

    from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    folder = OUT / "smolvla_world"
    vlm = write_smolvlm_folder(folder / "vlm", "tiny")
    inputs, outputs_ = features(camera=True)
    config = SmolVLAWorldConfig(
        input_features=inputs,
        output_features=outputs_,
        vlm_model_name=str(vlm),
        encoder_spec=encoder_spec(),
        device="cpu",
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        num_steps=3,
        resize_imgs_with_padding=(64, 64),
        max_state_dim=8,
        max_action_dim=8,
        tokenizer_max_length=16,
        num_vlm_layers=1,
        num_expert_layers=1,
        history_len=T,
        num_future=K,
        prophet_dim=16,
        prophet_heads=2,
        prophet_layers=1,
        cross_attn_heads=2,
        image_key=CAMERA,
    )
    torch.manual_seed(0)
    policy = SmolVLAWorldPolicy(config)
    open_gate_and_count(policy, policy.model.world)
    tokens = AutoTokenizer.from_pretrained(str(vlm))(
        [t + "\n" for t in TASKS], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    batch = world_batch(2) | {
        OBS_LANGUAGE_TOKENS: tokens["input_ids"],
        OBS_LANGUAGE_ATTENTION_MASK: tokens["attention_mask"].bool(),
    }
    noise = torch.randn(BATCH, CHUNK, 8, generator=torch.Generator().manual_seed(3))
    save(folder, policy, batch, noise)


def qwen_vla_world(backbone_root: Path) -> None:
    from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import QwenVLAWorldConfig
    from lerobot_policy_world_modality.qwen_vla_world.modeling_qwen_vla_world import QwenVLAWorldPolicy
    from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

    backbone = write_qwen_vl_folder(backbone_root / "qwen3_vl", "qwen3_vl", "tiny", seed=0)
    inputs, outputs_ = features(camera=True)
    config = QwenVLAWorldConfig(
        backbone="qwen3_vl_2b_instruct",
        backbone_path=str(backbone),
        backbone_dtype="float32",
        chunk_size=CHUNK,
        n_action_steps=2,
        history_len=T,
        num_future=K,
        latent_dim=ENV_DIM,
        encoder_spec=encoder_spec(),
        image_key=CAMERA,
        prophet_dim=16,
        prophet_heads=2,
        prophet_layers=1,
        cross_attn_heads=2,
        head_dim=16,
        lora_r=2,
        lora_alpha=4,
        use_proprio=True,
        input_features=inputs,
        output_features=outputs_,
        device="cpu",
    )
    torch.manual_seed(0)
    policy = QwenVLAWorldPolicy(config)
    open_gate_and_count(policy, policy.world)
    with torch.no_grad():
        policy.proprio_gate.fill_(0.3)
    save(OUT / "qwen_vla_world", policy, world_batch(3) | {"task": TASKS})


def main() -> None:
    import tempfile

    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    world_transformer()
    smolvla_world()
    with tempfile.TemporaryDirectory() as root:
        qwen_vla_world(Path(root))
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:>9}  {path.relative_to(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
