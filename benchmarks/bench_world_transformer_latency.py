"""Inference latency per action chunk of the world transformer: model A (no world memory) vs model F.

Usage: python benchmarks/bench_world_transformer_latency.py [--device cuda] [--batch-sizes 1,32]
       [--action-head mse,flow] [--repeats 200] [--warmup 20] [--autocast-bf16] [--json out.json] [--smoke]

Measures `WorldTransformerPolicy.predict_action_chunk` (one chunk of H=16 normalised actions) of the
config `wm train` builds by default (d_model 128, 3 layers, history T=4, future K=4; F adds the
Prophet and the gated cross-attention), built in code without a dataset: MetaWorld's shapes (4-dim
state and action, one instruction vocabulary) and, by default, the `learned` encoder's 64-dim
latents (`wm demo`'s default; `--encoder state`: the 39-dim environment state). Random weights (the
cost of a call does not depend on them); F shares A's weights and its world gate is opened
(tanh(0.5)) so the memory read is really computed. The batch already holds the world-latent history,
as `wm train`'s batches do, so the online world encoder is not timed (its cost is in
bench_encoders.py); A and F get the same batch (latents, state, instruction).

Per action head (mse; flow = 10 Euler steps) and batch size: warm-up calls, then --repeats timed
calls per arm, alternating A, F, A, F, ... so drifting clocks hit both alike, each call
CUDA-synchronised before and after. Reports the median and p90 in ms, the parameter count and the
F/A ratio of the medians. `--autocast-bf16` (CUDA only) also times every case under bf16 autocast.
`--smoke` runs on the CPU with a few repeats: it checks the script, it is not a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from lerobot_policy_world_modality.encoders import EncoderSpec, build_encoder, fit_state_encoder
from lerobot_policy_world_modality.world.history import WORLD_LATENTS, WORLD_LATENTS_MASK
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
    WorldTransformerConfig,
    features_for,
)
from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy
from world_modality.atomic_io import atomic_write_json

INSTRUCTION_KEY = "task"  # LeRobot datasets' instruction field
STATE_DIM, ACTION_DIM = 4, 4  # MetaWorld's end-effector state and action (world_modality.sim.metaworld.generate)
CAMERA, IMAGE_SIDE = f"{OBS_IMAGES}.corner2", 64  # `wm demo`'s camera and frame size
INSTRUCTIONS = ["reach-v3", "button-press-topdown-v3", "drawer-close-v3", "window-close-v3"]
ARMS = ("A", "F")


def encoder_spec(name: str, latent_dim: int, folder: Path) -> tuple[EncoderSpec, tuple[int, ...], bool]:
    """The encoder spec the policy is built for, the shape of the encoder's source observation and
    whether it is an image. Only the spec is used: the batches hold latents, the encoder never runs."""
    if name == "state":
        spec = build_encoder("state", fit_state_encoder(torch.randn(64, latent_dim), folder / "state")).spec
        return spec, (latent_dim,), False
    spec = EncoderSpec(
        name="learned",
        checkpoint_path=None,
        config_hash="bench-random-weights",
        camera_key=CAMERA,
        input_size=IMAGE_SIDE,
        pooling="keypoints",
        output_dim=latent_dim,
        render={"width": IMAGE_SIDE, "height": IMAGE_SIDE},
    )
    return spec, (IMAGE_SIDE, IMAGE_SIDE, 3), True


def build_config(
    model_type: str, head: str, spec: EncoderSpec, source_shape: tuple[int, ...], is_image: bool, device: torch.device
) -> WorldTransformerConfig:
    """As trainer.build_config, with the data's part given in code; the architecture is the default."""
    inputs, outputs = features_for(OBS_STATE, STATE_DIM, ACTION, ACTION_DIM, spec.camera_key, source_shape, is_image)
    return WorldTransformerConfig(
        model_type=model_type,
        action_head=head,
        instructions=INSTRUCTIONS,
        latent_dim=spec.output_dim,
        encoder_spec=spec.to_dict(),
        state_key=OBS_STATE,
        action_key=ACTION,
        instruction_key=INSTRUCTION_KEY,
        image_key=spec.camera_key if is_image else None,
        input_features=inputs,
        output_features=outputs,
        device=device.type,
    )


def build_policies(
    head: str, spec: EncoderSpec, source_shape: tuple[int, ...], is_image: bool, device: torch.device
) -> dict[str, WorldTransformerPolicy]:
    policies = {}
    for arm in ARMS:
        torch.manual_seed(0)
        policies[arm] = WorldTransformerPolicy(build_config(arm, head, spec, source_shape, is_image, device))
    policies["F"].load_state_dict(policies["A"].state_dict(), strict=False)  # same trunk; the world module is new
    with torch.no_grad():
        policies["F"].world.cross_attn.gate.fill_(0.5)  # an open gate: the memory read changes the actions
    return {arm: policy.to(device).eval() for arm, policy in policies.items()}


def make_batch(batch_size: int, history_len: int, latent_dim: int, device: torch.device) -> dict:
    """What the trunk reads: the latent history (all real), the normalised state, the instruction."""
    g = torch.Generator().manual_seed(0)
    batch = {
        WORLD_LATENTS: torch.randn(batch_size, history_len, latent_dim, generator=g),
        WORLD_LATENTS_MASK: torch.ones(batch_size, history_len, dtype=torch.bool),
        OBS_STATE: torch.randn(batch_size, STATE_DIM, generator=g),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch[INSTRUCTION_KEY] = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch_size)]
    return batch


def measure(
    policies: dict[str, WorldTransformerPolicy],
    batch: dict,
    device: torch.device,
    bf16: bool,
    warmup: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Seconds per `predict_action_chunk` call of each arm, the arms alternating call by call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times: dict[str, list[float]] = {arm: [] for arm in policies}
    with torch.no_grad():
        for i in range(warmup + repeats):
            for arm, policy in policies.items():
                sync()
                start = time.perf_counter()
                with autocast():
                    chunk = policy.predict_action_chunk(dict(batch))
                sync()
                elapsed = time.perf_counter() - start
                if i >= warmup:
                    times[arm].append(elapsed)
                if not torch.isfinite(chunk).all():
                    raise RuntimeError(f"model {arm} predicted non-finite actions")
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="CPU, few repeats: checks the script runs, not a figure")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,32")
    parser.add_argument("--action-head", default="mse,flow", help="mse, flow or both (comma-separated)")
    parser.add_argument(
        "--encoder",
        choices=("learned", "state"),
        default="learned",
        help="the encoder spec the policy is built for (latent width: 64 learned, 39 state)",
    )
    parser.add_argument(
        "--latent-dim", type=int, default=None, help="override the latent width (e.g. 1024 = V-JEPA 2 ViT-L)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per arm and case (default 200; smoke 5)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls per arm and case first (default 20; smoke 2)"
    )
    parser.add_argument(
        "--autocast-bf16", action="store_true", help="also time every case under bf16 autocast (CUDA only)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    args = parser.parse_args()
    smoke = args.smoke
    device = torch.device("cpu" if smoke else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: torch sees no CUDA device; run on a GPU machine, or use --smoke "
            "(or --device cpu) on the CPU"
        )
    if args.autocast_bf16 and device.type != "cuda":
        raise SystemExit("--autocast-bf16 is CUDA only")
    heads = [h.strip() for h in args.action_head.split(",") if h.strip()]
    if not heads or set(heads) - {"mse", "flow"}:
        raise SystemExit(f"--action-head takes mse, flow or mse,flow, got {args.action_head!r}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    repeats = args.repeats or (5 if smoke else 200)
    warmup = args.warmup if args.warmup is not None else (2 if smoke else 20)
    latent_dim = args.latent_dim or (39 if args.encoder == "state" else 64)
    dtypes = ["fp32", "bf16"] if args.autocast_bf16 else ["fp32"]

    results = {
        "host": platform.node(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "smoke": smoke,
        "encoder": args.encoder,
        "latent_dim": latent_dim,
        "repeats": repeats,
        "warmup": warmup,
        "rows": [],
        "f_over_a": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec, source_shape, is_image = encoder_spec(args.encoder, latent_dim, Path(tmp))
    for head in heads:
        policies = build_policies(head, spec, source_shape, is_image, device)
        config = policies["F"].config
        results.setdefault(
            "config",
            {
                k: getattr(config, k)
                for k in (
                    "chunk_size",
                    "history_len",
                    "num_future",
                    "d_model",
                    "n_heads",
                    "n_layers",
                    "dim_feedforward",
                    "prophet_dim",
                    "prophet_layers",
                    "cross_attn_heads",
                    "flow_steps",
                )
            },
        )
        params = {arm: sum(p.numel() for p in policy.parameters()) for arm, policy in policies.items()}
        for batch_size in batch_sizes:
            batch = make_batch(batch_size, config.history_len, latent_dim, device)
            for dtype in dtypes:
                times = measure(policies, batch, device, dtype == "bf16", warmup, repeats)
                medians = {}
                for arm in ARMS:
                    medians[arm] = 1000 * statistics.median(times[arm])
                    results["rows"].append(
                        {
                            "arm": arm,
                            "head": head,
                            "batch": batch_size,
                            "dtype": dtype,
                            "median_ms": medians[arm],
                            "p90_ms": 1000 * p90(times[arm]),
                            "params": params[arm],
                        }
                    )
                results["f_over_a"].append(
                    {"head": head, "batch": batch_size, "dtype": dtype, "ratio": medians["F"] / medians["A"]}
                )
                print(
                    f"{head} batch {batch_size} {dtype}: A {medians['A']:.3f} ms, F {medians['F']:.3f} ms", flush=True
                )

    where = results["gpu"] or f"CPU ({results['cpu']}, {results['torch_threads']} threads)"
    print(
        f"\n{where} | torch {torch.__version__} | {args.encoder} latents ({latent_dim}-dim) | "
        f"median of {repeats} after {warmup} warm-ups{' | SMOKE: not a figure' if smoke else ''}\n"
    )
    print("| arm | head | batch | dtype | median ms | p90 ms | params |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in results["rows"]:
        print(
            f"| {r['arm']} | {r['head']} | {r['batch']} | {r['dtype']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['params']:,} |"
        )
    print("\n| head | batch | dtype | F/A latency |")
    print("|---|---:|---|---:|")
    for r in results["f_over_a"]:
        print(f"| {r['head']} | {r['batch']} | {r['dtype']} | {r['ratio']:.2f} |")
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
