"""World-memory overhead of SmolVLA-world: E0 (LeRobot's `smolvla`) vs E2 (`smolvla_world`, predicted memory).

Usage: python benchmarks/bench_smolvla_world.py [--smoke] [--iters 50] [--train-batch-size 32] [--json out.json]
       [--compile reduce-overhead] [--compile-denoise-step] [--no-train] [--cuda-graphs chunk,step] [--profile]

Both policies use the full SmolVLM2-500M-Video-Instruct architecture written by
`write_smolvlm_folder(size="500m")` with random weights (the cost of a forward does not depend on
the weights) and SmolVLA's defaults (first 16 VLM layers, 0.75-wide action expert, chunk of 50,
10 denoising steps), two 256x256 cameras, an 8-dim state, 7-dim actions (LIBERO's shapes), and E2
shares E0's weights. E2 gets its world latents as `wm train` gives them (history T=4, future K=4,
dim 1024 = V-JEPA 2 ViT-L's width), so the figures are the policy's own cost; the world encoder's
cost is in bench_encoders.py. On CUDA everything runs under bf16 autocast (LeRobot's `use_amp`).

- inference: latency of one action chunk (`predict_action_chunk`, batch 1), median of --iters calls;
- training: samples/s of forward + backward + AdamW steps (SmolVLA's training preset: VLM frozen,
  expert + projections + world module trained), median of --iters steps.
`--cuda-graphs chunk,step` adds, per scope, E0-SCOPE (`smolvla_world` without world module: LeRobot's SmolVLA)
and E2-SCOPE, replayed from CUDA graphs (`cuda_graphs`: the whole chunk, or each denoising step), beside the eager
E0 and E2, and checks that their actions equal the eager ones within bf16 tolerance. `--profile` prints where one chunk's time goes (torch.profiler) per arm.
The floor beside the latencies: the bf16 weights read once at the GPU's memory bandwidth.
Arms alternate in rounds so drifting clocks hit both alike. Prints a table and the E2/E0 ratios
(target: world memory costs <= 10% in both). `--smoke` runs a tiny SmolVLM on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
from provenance import commit, device_name, today
from tqdm.auto import tqdm

from lerobot_policy_world_modality.encoders import build_encoder, fit_state_encoder
from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig
from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy
from lerobot_policy_world_modality.world.history import (
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)
from world_modality.atomic_io import atomic_write_json
from world_modality.model_folders.smolvlm import write_smolvlm_folder

CAMERAS = ("observation.images.image", "observation.images.image2")
LATENT_KEY = "observation.environment_state"  # the world encoder's source; SmolVLA itself ignores it
STATE_DIM, ACTION_DIM, IMAGE_SIDE, TEXT_TOKENS = 8, 7, 256, 24


def build_policies(
    folder: Path,
    spec: dict,
    smoke: bool,
    device: torch.device,
    compile_mode: str | None = None,
    compile_denoise_step: bool = False,
    graph_scopes: tuple[str, ...] = (),
) -> dict[str, torch.nn.Module]:
    latent_dim = spec["output_dim"]
    inputs = {key: PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIDE, IMAGE_SIDE)) for key in CAMERAS}
    inputs |= {
        "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        LATENT_KEY: PolicyFeature(FeatureType.ENV, (latent_dim,)),
    }
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}
    shared = {
        "input_features": inputs,
        "output_features": outputs,
        "vlm_model_name": str(folder),
        "device": device.type,
    }
    if compile_mode:  # LeRobot's own switch: torch.compile of SmolVLA's sample_actions and forward
        shared |= {"compile_model": True, "compile_mode": compile_mode}
    if smoke:
        shared |= {"chunk_size": 8, "n_action_steps": 8, "num_steps": 3, "resize_imgs_with_padding": (64, 64)}
    torch.manual_seed(0)
    e0 = SmolVLAPolicy(SmolVLAConfig(**shared))
    world_sizes = {"prophet_dim": 32, "prophet_layers": 1} if smoke else {}
    world = {"encoder_spec": spec, "compile_denoise_step": compile_denoise_step, **world_sizes}
    e2 = SmolVLAWorldPolicy(SmolVLAWorldConfig(**shared, **world, cuda_graphs="off"))
    e2.load_state_dict(e0.state_dict(), strict=False)  # same SmolVLA weights; the world module is new
    if compile_denoise_step:  # E0 is LeRobot's SmolVLA: the same compilation, applied from outside
        e0.model.denoise_step = torch.compile(e0.model.denoise_step)
    policies = {"E0": e0, "E2": e2}
    for scope in graph_scopes:
        graphed = SmolVLAWorldConfig(**shared, **world, cuda_graphs=scope, use_world_module=False)
        policies[f"E0-{scope}"] = SmolVLAWorldPolicy(graphed)
        policies[f"E0-{scope}"].load_state_dict(e0.state_dict())
        policies[f"E2-{scope}"] = SmolVLAWorldPolicy(SmolVLAWorldConfig(**shared, **world, cuda_graphs=scope))
        policies[f"E2-{scope}"].load_state_dict(e2.state_dict())
    return {arm: policy.to(device) for arm, policy in policies.items()}


# Memory bandwidth (bytes/s) of the GPUs these benchmarks run on, for the weight-reading floor.
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def weight_floor_ms(policy: torch.nn.Module, device_name: str) -> float | None:
    """Milliseconds to read the policy's weights once in bf16 at the GPU's memory bandwidth (None: unknown GPU)."""
    bandwidth = next((value for name, value in BANDWIDTH.items() if name in device_name), None)
    return None if bandwidth is None else 1000 * 2 * sum(p.numel() for p in policy.parameters()) / bandwidth


def make_batch(batch_size: int, chunk_size: int, latent_dim: int, device: torch.device, world) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {key: torch.rand(batch_size, 3, IMAGE_SIDE, IMAGE_SIDE, generator=g) for key in CAMERAS}
    batch |= {
        "observation.state": torch.randn(batch_size, STATE_DIM, generator=g),
        "action": torch.randn(batch_size, chunk_size, ACTION_DIM, generator=g),
        "action_is_pad": torch.zeros(batch_size, chunk_size, dtype=torch.bool),
        OBS_LANGUAGE_TOKENS: torch.randint(10, 400, (batch_size, TEXT_TOKENS), generator=g),
        OBS_LANGUAGE_ATTENTION_MASK: torch.ones(batch_size, TEXT_TOKENS, dtype=torch.bool),
    }
    if world is not None:
        batch |= {
            WORLD_LATENTS: torch.randn(batch_size, world.history_len, latent_dim, generator=g),
            WORLD_LATENTS_MASK: torch.ones(batch_size, world.history_len, dtype=torch.bool),
            WORLD_FUTURE: torch.randn(batch_size, world.num_future, latent_dim, generator=g),
            WORLD_FUTURE_MASK: torch.ones(batch_size, world.num_future, dtype=torch.bool),
        }
    return {k: v.to(device) for k, v in batch.items()}


def timed(fn, arm: str, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(arm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny SmolVLM on the CPU: checks the script runs")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per arm (default 50; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per arm first (default 5; smoke 1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the timed calls are split over")
    parser.add_argument("--train-batch-size", type=int, default=None, help="default 32; smoke 2")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    parser.add_argument(
        "--compile",
        default=None,
        metavar="MODE",
        help="torch.compile mode for both arms (LeRobot's compile_model): default, reduce-overhead, max-autotune",
    )
    parser.add_argument(
        "--compile-denoise-step",
        action="store_true",
        help="torch.compile one denoising step (smolvla_world's compile_denoise_step; the same for E0)",
    )
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument(
        "--cuda-graphs",
        default="",
        metavar="SCOPES",
        help="add arms replayed from CUDA graphs of these scopes (comma-separated: chunk, step)",
    )
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one chunk per arm")
    args = parser.parse_args()
    smoke = args.smoke
    iters = args.iters or (3 if smoke else 50)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 5)
    train_batch = args.train_batch_size or (2 if smoke else 32)
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    if not smoke and device.type != "cuda":
        raise SystemExit("the full-size benchmark needs a CUDA GPU; use --smoke on the CPU")
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_smolvlm_folder(Path(tmp) / "smolvlm", "tiny" if smoke else "500m")
        latent_dim = 16 if smoke else 1024
        stats = torch.randn(16, latent_dim)
        spec = build_encoder("state", fit_state_encoder(stats, Path(tmp) / "latent-spec", state_key=LATENT_KEY)).spec
        policies = build_policies(
            folder,
            spec.to_dict(),
            smoke,
            device,
            args.compile,
            args.compile_denoise_step,
            tuple(scope for scope in args.cuda_graphs.split(",") if scope),
        )
    config = policies["E2"].config
    infer_batch = {
        arm: make_batch(1, config.chunk_size, latent_dim, device, config if arm.startswith("E2") else None)
        for arm in policies
    }
    train_batch_of = {
        arm: make_batch(train_batch, config.chunk_size, latent_dim, device, config if arm.startswith("E2") else None)
        for arm in policies
    }
    noise = torch.randn(1, config.chunk_size, config.max_action_dim, generator=torch.Generator().manual_seed(1)).to(
        device
    )
    optimizers = {
        arm: config.get_optimizer_preset().build([p for p in policy.parameters() if p.requires_grad])
        for arm, policy in policies.items()
    }

    def infer(arm: str) -> torch.Tensor:
        policy = policies[arm].eval()
        policy.reset()
        with autocast():
            return policy.predict_action_chunk(dict(infer_batch[arm]), noise=noise)

    max_action_difference = {}
    for arm in [arm for arm in policies if "-" in arm]:
        eager = infer(arm.split("-")[0]).float()
        max_action_difference[arm] = (infer(arm).float() - eager).abs().max().item()
        print(f"{arm}: largest action difference to the eager arm {max_action_difference[arm]:.2e} (bf16)")
        if not max_action_difference[arm] <= 0.05:
            raise SystemExit(f"{arm}'s actions differ from the eager arm's beyond bf16 tolerance")

    def train_step(arm: str) -> None:
        policy, optimizer = policies[arm], optimizers[arm]
        policy.train()
        with autocast():
            loss, _ = policy.forward(dict(train_batch_of[arm]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    latency: dict[str, list[float]] = {arm: [] for arm in policies}
    step_time: dict[str, list[float]] = {arm: [] for arm in policies}
    per_round = max(1, iters // args.rounds)
    measures = ((infer, latency),) if args.no_train else ((infer, latency), (train_step, step_time))
    bar = tqdm(total=len(measures) * len(policies) * (warmup + per_round * args.rounds), desc="bench smolvla_world")
    for round_index in range(args.rounds):
        for arm in policies:
            for measure, times in measures:
                for i in range((warmup if round_index == 0 else 0) + per_round):
                    elapsed = timed(measure, arm, device)
                    if round_index > 0 or i >= warmup:
                        times[arm].append(elapsed)
                    bar.update()
    bar.close()
    if args.profile:
        for arm in policies:
            with torch.profiler.profile(activities=torch.profiler.supported_activities()) as profiler:
                timed(infer, arm, device)
            print(f"\n--- {arm}: one chunk ---")
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(profiler.key_averages().table(sort_by=sort, row_limit=15))

    results = {
        "device": device_name(device.type),
        "date": today(),
        "commit": commit(),
        "vlm": "tiny (smoke)" if smoke else "SmolVLM2-500M architecture, random weights",
        "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
        "compile": args.compile,
        "compile_denoise_step": args.compile_denoise_step,
        "chunk_size": config.chunk_size,
        "denoising_steps": config.num_steps,
        "train_batch_size": train_batch,
        "iters": per_round * args.rounds,
        "cuda_graphs_max_action_difference": max_action_difference,
        "arms": {},
    }
    for arm, policy in policies.items():
        results["arms"][arm] = {
            "params_total": sum(p.numel() for p in policy.parameters()),
            "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
            "chunk_latency_ms": 1000 * statistics.median(latency[arm]),
            "chunk_latency_p90_ms": 1000 * statistics.quantiles(latency[arm], n=10)[-1]
            if len(latency[arm]) > 1
            else float("nan"),
            "weight_floor_ms": weight_floor_ms(policy, results["device"]),
            "train_samples_per_s": train_batch / statistics.median(step_time[arm]) if step_time[arm] else float("nan"),
        }
    e0, e2 = results["arms"]["E0"], results["arms"]["E2"]
    results["latency_ratio_e2_over_e0"] = e2["chunk_latency_ms"] / e0["chunk_latency_ms"]
    results["train_throughput_ratio_e2_over_e0"] = e2["train_samples_per_s"] / e0["train_samples_per_s"]

    print(
        f"\n{results['device']} | {results['vlm']} | {results['dtype']} | chunk {config.chunk_size}, "
        f"{config.num_steps} denoising steps | train batch {train_batch} | median of {results['iters']} | compile {args.compile}"
        f"{' | compiled denoising step' if args.compile_denoise_step else ''}"
    )
    print(f"{'arm':<34}{'params (trainable)':>24}{'chunk ms (p90)':>20}{'floor ms':>10}{'train samples/s':>17}")
    names = {"E0": "E0 smolvla", "E2": "E2 smolvla_world (pred)"}
    for arm, row in results["arms"].items():
        name = names.get(arm) or f"{arm.split('-')[0]} smolvla_world, {arm.split('-')[1]} graphs"
        params = f"{row['params_total'] / 1e6:.1f}M ({row['params_trainable'] / 1e6:.1f}M)"
        latency_text = f"{row['chunk_latency_ms']:.2f} ({row['chunk_latency_p90_ms']:.2f})"
        floor = "-" if row["weight_floor_ms"] is None else f"{row['weight_floor_ms']:.2f}"
        print(f"{name:<34}{params:>24}{latency_text:>20}{floor:>10}{row['train_samples_per_s']:>17.1f}")
    for scope in (arm.split("-")[1] for arm in results["arms"] if arm.startswith("E2-")):
        graphs_e0, graphs_e2 = results["arms"][f"E0-{scope}"], results["arms"][f"E2-{scope}"]
        ratio = graphs_e2["chunk_latency_ms"] / graphs_e0["chunk_latency_ms"]
        speedup = e2["chunk_latency_ms"] / graphs_e2["chunk_latency_ms"]
        results[f"{scope}_graphs_latency_ratio_e2_over_e0"], results[f"{scope}_graphs_speedup_e2"] = ratio, speedup
        print(f"{scope} graphs: E2/E0 latency {ratio:.3f}; E2 eager / E2 {scope} graphs {speedup:.2f}x")
    latency_extra = 100 * (results["latency_ratio_e2_over_e0"] - 1)
    throughput_loss = 100 * (1 - results["train_throughput_ratio_e2_over_e0"])
    print(
        f"E2/E0 inference latency: {results['latency_ratio_e2_over_e0']:.3f} ({latency_extra:+.1f}%); "
        f"training samples/s: {results['train_throughput_ratio_e2_over_e0']:.3f} ({throughput_loss:.1f}% fewer); "
        f"target <= 10% extra: {'met' if latency_extra <= 10 and throughput_loss <= 10 else 'NOT met'}"
    )
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
