"""F+ (`qwen_vla_world`) on the full-size Qwen3-VL-4B architecture: latency, training throughput, memory.

Usage: python benchmarks/bench_qwen_vla_world.py [--backbone qwen3_vl_4b_instruct] [--image-size 224]
       [--batch-size 8] [--gradient-checkpointing] [--json out.json]
       python benchmarks/bench_qwen_vla_world.py --smoke      (tiny Qwen3-VL on CPU, seconds)

The backbone is the published architecture written by `write_qwen_vl_folder` (config only) and built
with random weights directly on the GPU (bf16); nothing is downloaded. Each arm is a fresh policy:

- E0: no world module (LoRA on the language model, trainable <ACT_i> rows, action head)
- E2: + world memory (Prophet + gated cross-attention into the <ACT_i> states), no world loss
- E4: E2 + FLARE world loss (lambda_world=1) + CoC text loss after the <ACT_i> tokens (joint pass)

Per arm: inference latency per action chunk at batch 1 (`predict_action_chunk`: Qwen-VL image
processing on the device, tokenisation, one forward pass, world memory, head; no decoding; median over
`--repeats` after warm-up, CUDA-synchronised, the arms' calls alternating), training samples/s (forward, backward, clip, AdamW;
median step) and the peak GPU memory of training. Ratios: E2/E0 latency and E0/E2 step time (the
world-memory overhead; target within 10%), and the latency against the 74 ms OpenVLA-OFT reported for
its 7B model on an A100. Results are printed as a table and written atomically with `--json`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import BACKBONES, QwenVLAWorldConfig
from lerobot_policy_world_modality.qwen_vla_world.modeling_qwen_vla_world import QwenVLAWorldPolicy
from lerobot_policy_world_modality.world.history import (
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)
from world_modality.atomic_io import atomic_write_json
from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

IMAGE_KEY = "observation.images.image"
STATE_DIM, ACTION_DIM = 8, 7  # LIBERO's proprio and action sizes
OPENVLA_OFT_MS = 74.0
COC_TEXT = (
    "The gripper is above the bowl and open, so it moves down, closes on the rim, lifts the bowl "
    "and carries it to the plate before releasing it."
)
ARMS = {
    "E0": {"use_world_module": False, "lambda_world": 0.0, "lambda_text": 0.0},
    "E2": {"use_world_module": True, "lambda_world": 0.0, "lambda_text": 0.0},
    "E4": {"use_world_module": True, "lambda_world": 1.0, "lambda_text": 0.5},
}
FOLDER_SIZES = {
    "qwen3_vl_2b_instruct": ("qwen3_vl", "2b"),
    "qwen3_vl_4b_instruct": ("qwen3_vl", "4b"),
    "qwen3_vl_8b_instruct": ("qwen3_vl", "8b"),
    "qwen2_5_vl_3b_instruct": ("qwen2_5_vl", "3b"),
}


def make_policy(arm: str, folder: Path, args, device: torch.device) -> QwenVLAWorldPolicy:
    spec = EncoderSpec(
        name="state",
        checkpoint_path=None,
        config_hash="benchmark",
        camera_key="observation.environment_state",
        input_size=None,
        pooling=None,
        output_dim=args.latent_dim,
    )
    config = QwenVLAWorldConfig(
        backbone=args.backbone,
        backbone_path=str(folder),
        backbone_init="random",
        backbone_dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        compile_model=args.compile,
        chunk_size=args.chunk_size,
        n_action_steps=args.chunk_size,
        history_len=args.history_len,
        num_future=args.num_future,
        latent_dim=args.latent_dim,
        encoder_spec=spec.to_dict(),
        image_key=IMAGE_KEY,
        use_proprio=True,
        coc_max_tokens=64,
        input_features={
            IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, args.image_size, args.image_size)),
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        device=device.type,
        **args.policy_overrides,
        **ARMS[arm],
    )
    torch.manual_seed(0)
    with device:  # build the random backbone where it runs (fast init, no host copy)
        return QwenVLAWorldPolicy(config).to(device)


def make_batch(batch_size: int, args, device: torch.device, coc: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        IMAGE_KEY: torch.rand(batch_size, 3, args.image_size, args.image_size, generator=g),
        "observation.state": torch.randn(batch_size, STATE_DIM, generator=g),
        "action": torch.randn(batch_size, args.chunk_size, ACTION_DIM, generator=g),
        "action_is_pad": torch.zeros(batch_size, args.chunk_size, dtype=torch.bool),
        WORLD_LATENTS: torch.randn(batch_size, args.history_len, args.latent_dim, generator=g),
        WORLD_LATENTS_MASK: torch.ones(batch_size, args.history_len, dtype=torch.bool),
        WORLD_FUTURE: torch.randn(batch_size, args.num_future, args.latent_dim, generator=g),
        WORLD_FUTURE_MASK: torch.ones(batch_size, args.num_future, dtype=torch.bool),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["task"] = ["put the black bowl on the plate"] * batch_size
    if coc:
        batch["coc_text"] = [COC_TEXT] * batch_size
    return batch


def timed(fn, repeats: int, warmup: int, sync) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def measure_latency(policies: dict[str, QwenVLAWorldPolicy], args, device: torch.device) -> dict[str, dict]:
    """Chunk latency at batch 1 per arm; after each arm's warm-up the timed calls alternate between the
    arms, so drift of a shared machine affects every arm alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    single = make_batch(1, args, device, coc=False)
    for policy in policies.values():
        policy.eval()
        timed(lambda: policy.predict_action_chunk(single), 0, args.warmup, sync)
    times: dict[str, list[float]] = {arm: [] for arm in policies}
    for _ in range(args.repeats):
        for arm, policy in policies.items():
            times[arm] += timed(lambda: policy.predict_action_chunk(single), 1, 0, sync)
    return {
        arm: {
            "latency_ms_median": 1000 * statistics.median(t),
            "latency_ms_p90": 1000 * sorted(t)[int(0.9 * (len(t) - 1))],
        }
        for arm, t in times.items()
    }


def measure_training(arm: str, policy: QwenVLAWorldPolicy, args, device: torch.device) -> dict[str, float]:
    """Median training step (forward, backward, clip, AdamW) and the peak GPU memory of training."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    policy.train()
    batch = make_batch(args.batch_size, args, device, coc=ARMS[arm]["lambda_text"] > 0)
    params = policy.get_optim_params()
    optimizer = policy.config.get_optimizer_preset().build(params)

    def step() -> None:
        loss, _ = policy.forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, policy.config.optimizer_grad_clip_norm)
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = statistics.median(timed(step, args.steps, args.warmup, sync))
    result = {"train_step_ms": 1000 * step_s, "train_samples_per_s": args.batch_size / step_s}
    if device.type == "cuda":
        result["train_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="qwen3_vl_4b_instruct", choices=sorted(BACKBONES))
    parser.add_argument("--image-size", type=int, default=224, help="square camera frames (the dataset's resolution)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--chunk-size", type=int, default=16, help="H: <ACT_i> tokens and actions per chunk")
    parser.add_argument("--latent-dim", type=int, default=1024, help="world-latent size (V-JEPA 2 ViT-L: 1024)")
    parser.add_argument("--history-len", type=int, default=4)
    parser.add_argument("--num-future", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile_model=True: torch.compile each decoder layer of the language model",
    )
    parser.add_argument("--no-train", action="store_true", help="latency only")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    parser.add_argument("--repeats", type=int, default=30, help="timed inference calls (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arms", default="E0,E2,E4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny Qwen3-VL on CPU: checks the script, not a figure")
    parser.add_argument("--json", default=None, help="also write the results to this file (atomically)")
    args = parser.parse_args()
    args.policy_overrides = {}
    size = FOLDER_SIZES[args.backbone]
    if args.smoke:
        args.device, args.dtype, args.image_size, args.batch_size, args.chunk_size = "cpu", "float32", 64, 2, 4
        args.latent_dim, args.steps, args.repeats, args.warmup = 16, 2, 3, 1
        args.policy_overrides = {
            "prophet_dim": 32,
            "prophet_heads": 2,
            "prophet_layers": 1,
            "cross_attn_heads": 2,
            "head_dim": 32,
            "lora_r": 4,
        }
        size = (size[0], "tiny")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: run on the GPU machine, or pass --smoke for the tiny CPU check")
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; valid: {sorted(ARMS)}")

    results = {
        "host": platform.node(),
        "backbone": args.backbone,
        "size": size[1],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "compile_model": args.compile,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_qwen_vl_folder(Path(tmp) / "backbone", *size, weights=False)
        policies = {arm: make_policy(arm, folder, args, device) for arm in arms}
    for arm, policy in policies.items():
        results[arm] = {
            "trainable_parameters": sum(p.numel() for p in policy.get_optim_params()),
            "parameters": sum(p.numel() for p in policy.parameters()),
        }
    for arm, latency in measure_latency(policies, args, device).items():
        results[arm] |= latency
        print(f"{arm}: latency {latency['latency_ms_median']:.1f} ms", flush=True)
    if not args.no_train:
        for arm in arms:
            results[arm] |= measure_training(arm, policies.pop(arm), args, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the arm's policy is gone: give its memory back before the next one
            print(f"{arm}: train {results[arm]['train_samples_per_s']:.2f} samples/s", flush=True)
    if "E0" in results and "E2" in results:
        results["world_latency_ratio_E2_over_E0"] = (
            results["E2"]["latency_ms_median"] / results["E0"]["latency_ms_median"]
        )
        if not args.no_train:
            results["world_train_cost_ratio_E0_over_E2"] = (
                results["E0"]["train_samples_per_s"] / results["E2"]["train_samples_per_s"]
            )

    print(
        f"\nF+ {args.backbone} ({size[1]}, random weights, {args.dtype}) on {results['device']}; "
        f"{args.image_size}px image, H={args.chunk_size}, train batch {args.batch_size}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}"
        f"{', compiled decoder layers' if args.compile else ''}"
    )
    print(
        "| arm | latency / chunk, batch 1 (median ms) | p90 ms | train samples/s | train step ms | "
        "peak train memory GiB | trainable params |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in arms:
        r = results[arm]
        memory = f"{r['train_peak_memory_gib']:.1f}" if "train_peak_memory_gib" in r else "-"
        train = f"{r['train_samples_per_s']:.2f} | {r['train_step_ms']:.0f}" if "train_step_ms" in r else "- | -"
        print(
            f"| {arm} | {r['latency_ms_median']:.1f} | {r['latency_ms_p90']:.1f} | {train} | {memory} | "
            f"{r['trainable_parameters']:,} |"
        )
    if "world_latency_ratio_E2_over_E0" in results:
        print(
            f"world-memory overhead: latency E2/E0 = {results['world_latency_ratio_E2_over_E0']:.3f}"
            + (
                f", training cost E0/E2 samples/s = {results['world_train_cost_ratio_E0_over_E2']:.3f}"
                if "world_train_cost_ratio_E0_over_E2" in results
                else ""
            )
            + " (target <= 1.10)"
        )
    best = min(results[a]["latency_ms_median"] for a in arms)
    print(f"latency vs OpenVLA-OFT 7B on A100 ({OPENVLA_OFT_MS:.0f} ms): {best / OPENVLA_OFT_MS:.2f}x")
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
