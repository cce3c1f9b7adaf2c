"""Training throughput of the world transformer: model A (baseline) vs model F (world memory).

Usage: python benchmarks/bench_train_throughput.py DATASET --latents DIR [--batch-size 64] [--steps 50]
       [--devices cpu,cuda] [--json out.json]

Runs `wm train`'s own step (batch gathered from the latent cache on the training device, as `wm train`
does -> LeRobot preprocessor -> forward, backward, clip, AdamW) with the default policy config on each
device (cuda only when present), after warm-up steps. Per step, the time to build and normalise the
batch ("data") and the forward/backward/optimizer time ("compute", CUDA-synchronised) are measured
separately, so a GPU that waits on data shows up as a large data share. Reports samples/s per model and the F/A cost ratio (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from lerobot.policies.factory import make_pre_post_processors

from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy
from world_modality.data.check import DatasetKeys, check_dataset
from world_modality.training.data import LatentBatches, batch_device, read_frame_table, split_episodes
from world_modality.training.trainer import TrainOptions, build_config


def measure(model_type: str, args, device: torch.device) -> dict[str, float]:
    keys = DatasetKeys()
    summary = check_dataset(args.dataset, keys)
    cache = LatentCache.load(args.latents, dataset=args.dataset)
    table = read_frame_table(args.dataset, keys)
    opts = TrainOptions(dataset=args.dataset, latents=args.latents, out="", model_type=model_type, steps=args.steps)
    config = build_config(
        opts,
        cache,
        table.instructions,
        table.state.shape[1],
        table.action.shape[1],
        summary.features,
        summary.keys.get("image"),
        device,
    )
    data = LatentBatches(
        cache,
        table,
        keys,
        split_episodes(table, 0.1)[0],
        config.chunk_size,
        config.history_len,
        config.num_future,
        device=batch_device(None, device),
    )
    torch.manual_seed(0)
    policy = WorldTransformerPolicy(config).to(device).train()
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=data.stats())
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    sampler = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data_times, compute_times = [], []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = preprocessor(data.sample(args.batch_size, sampler))
        sync()
        t1 = time.perf_counter()
        loss, _ = policy.forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.get_optim_params(), config.optimizer_grad_clip_norm)
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        if step >= args.warmup:
            data_times.append(t1 - t0)
            compute_times.append(t2 - t1)
    data_s, compute_s = statistics.median(data_times), statistics.median(compute_times)
    return {
        "samples_per_s": args.batch_size / (data_s + compute_s),
        "step_ms": 1000 * (data_s + compute_s),
        "data_ms": 1000 * data_s,
        "compute_ms": 1000 * compute_s,
        "data_share": data_s / (data_s + compute_s),
        "parameters": sum(p.numel() for p in policy.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--latents", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="timed steps (median step time is reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when not present")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    results = {"host": platform.node(), "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size}
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            results["gpu"] = torch.cuda.get_device_name(device)
        per_model = {model: measure(model, args, device) for model in ("A", "F")}
        per_model["F_over_A_cost"] = per_model["A"]["samples_per_s"] / per_model["F"]["samples_per_s"]
        results[name] = per_model
        for model in ("A", "F"):
            r = per_model[model]
            print(
                f"{name:5s} {model}: {r['samples_per_s']:9.1f} samples/s  step {r['step_ms']:7.2f} ms "
                f"(data {r['data_ms']:6.2f} ms = {100 * r['data_share']:4.1f}%, compute {r['compute_ms']:7.2f} ms)  "
                f"{r['parameters']:,} params"
            )
        print(f"{name:5s} F/A cost ratio: {per_model['F_over_A_cost']:.2f} (target <= 1.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
