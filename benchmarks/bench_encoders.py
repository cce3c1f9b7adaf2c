"""World-encoder throughput (frames/s) through the project's own `build_encoder` path.

Usage: python benchmarks/bench_encoders.py [--device cpu|cuda] [--sizes small|full] [--batch 64] [--json out.json]

Models are built from configs in code with random weights (the cost of a forward pass does not depend
on the weights), saved to a temporary folder and loaded exactly as a user's local checkpoint is:
  small: learned (the offline default), DINOv2-small (384), V-JEPA 2 tiny (m=4) -- CPU-friendly
  full:  learned, DINOv2-base (768, 224 px), V-JEPA 2 ViT-L (1024, 256 px, m=4)
Input: uint8 frames at the dataset resolution (128x128); each encoder resizes to its own input size.
Reported: median frames/s over timed batches after warm-up (CUDA-synchronised), in fp32 and, on
CUDA, bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model, VJEPA2Config, VJEPA2Model

from lerobot_policy_world_modality.encoders import build_encoder, train_learned_encoder

CONFIGS = {
    "small": {
        "dinov2": dict(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=14,
            image_size=224,
        ),
        "vjepa2": dict(
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=3,
            mlp_ratio=4.0,
            crop_size=128,
            patch_size=16,
            tubelet_size=2,
            frames_per_clip=4,
            pred_hidden_size=96,
            pred_num_hidden_layers=1,
            pred_num_attention_heads=3,
        ),
    },
    "full": {
        "dinov2": dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            patch_size=14,
            image_size=224,
        ),
        "vjepa2": dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            mlp_ratio=4.0,
            crop_size=256,
            patch_size=16,
            tubelet_size=2,
            frames_per_clip=4,
        ),
    },
}


def _build(name: str, sizes: str, folder: Path, device: str):
    if name == "learned":
        episodes = [np.random.default_rng(i).integers(0, 255, (8, 128, 128, 3), dtype=np.uint8) for i in range(2)]
        path = train_learned_encoder(episodes, folder / "learned", steps=1, progress=False)
        return build_encoder("learned", checkpoint_path=path, device=device)
    if name == "dinov2":
        Dinov2Model(Dinov2Config(**CONFIGS[sizes]["dinov2"])).save_pretrained(folder / "dinov2")
        return build_encoder("dinov2", checkpoint_path=folder / "dinov2", device=device, input_size=224)
    VJEPA2Model(VJEPA2Config(**CONFIGS[sizes]["vjepa2"])).save_pretrained(folder / "vjepa2")
    crop = CONFIGS[sizes]["vjepa2"]["crop_size"]
    return build_encoder("vjepa2", checkpoint_path=folder / "vjepa2", device=device, temporal_window=4, input_size=crop)


def measure(encoder, batch: int, device: str, autocast: bool, repeats: int) -> float:
    m = encoder.spec.temporal_window
    frames = torch.randint(0, 255, (batch, m, 128, 128, 3), dtype=torch.uint8)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    rates = []
    with ctx:
        for i in range(repeats + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            encoder.encode(frames)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # warm-up
                rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", choices=("small", "full"), default="full" if torch.cuda.is_available() else "small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("learned", "dinov2", "vjepa2"):
            encoder = _build(name, args.sizes, Path(tmp), args.device)
            modes = [False, True] if args.device == "cuda" else [False]
            for autocast in modes:
                key = f"{name} ({args.sizes}, dim {encoder.spec.output_dim}, m={encoder.spec.temporal_window}){' bf16' if autocast else ''}"
                results[key] = measure(encoder, args.batch, args.device, autocast, args.repeats)
                print(f"{key:48s} {results[key]:10.1f} frames/s  [{device_name}, batch {args.batch}]", flush=True)
            del encoder
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "frames_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
