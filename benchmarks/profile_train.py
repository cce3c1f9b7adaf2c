"""Where `wm train`'s step time goes, next to the benchmark's bare step (bench_train_throughput.py).

Usage: python benchmarks/profile_train.py DATASET --latents DIR [--models A,F] [--batch-size 256]
       [--steps 200] [--device cuda] [--trace DIR] [--json out.json]

For each model it measures, in one process:
- ``bare``: bench_train_throughput's step (batch -> preprocessor -> forward/backward/clip/AdamW), synchronised;
- ``wm train``: the real `train()` (TensorBoard logging every step, the default), step time = the interval
  between progress-bar updates (median over the steps, so the checkpoint/validation step does not count);
- ``wm train, log_every=N``: the same with logging (host reads of the losses, TensorBoard) only every N steps.
The differences say what logging and the loop's bookkeeping cost. ``--trace DIR`` also profiles ``--trace-steps``
steps of `wm train` with torch.profiler: a Chrome trace per model in DIR and the ops by self CPU time printed
(look for aten::item / aten::_local_scalar_dense and cudaStreamSynchronize: host waits for the GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_throughput import measure  # noqa: E402  (the bare step: one definition)

from world_modality.training import trainer  # noqa: E402


class _StepClock(trainer.tqdm):
    """The trainer's progress bar, recording when each step ends."""

    stamps: list[float] = []

    def update(self, n=1):
        _StepClock.stamps.append(time.perf_counter())
        return super().update(n)


def wm_train_step_ms(args, model: str, device: str, log_every: int, steps: int, profiler=None) -> float:
    """Median step time of `train()` in ms (the interval between two progress-bar updates)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as out:
        opts = trainer.TrainOptions(
            dataset=args.dataset,
            latents=args.latents,
            out=out,
            model_type=model,
            steps=steps,
            batch_size=args.batch_size,
            log_every=log_every,
            save_every=steps,
            device=device,
            progress=False,
        )
        _StepClock.stamps = []
        real, trainer.tqdm = trainer.tqdm, _StepClock
        try:
            if profiler is None:
                trainer.train(opts)
            else:
                with profiler:
                    trainer.train(opts)
        finally:
            trainer.tqdm = real
        sync()
    intervals = [b - a for a, b in zip(_StepClock.stamps, _StepClock.stamps[1:])][args.warmup :]
    return 1000 * statistics.median(intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--latents", required=True)
    parser.add_argument("--models", default="A,F")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="steps of each `wm train` run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log-every", type=int, default=50, help="the sparse-logging variant's interval")
    parser.add_argument("--trace", default=None, help="folder for torch.profiler traces of `wm train`")
    parser.add_argument("--trace-steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict = {"device": args.device, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    for model in args.models.split(","):
        bare_args = argparse.Namespace(
            dataset=args.dataset, latents=args.latents, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup
        )
        row = {
            "bare_ms": measure(model, bare_args, torch.device(args.device))["step_ms"],
            "wm_train_ms": wm_train_step_ms(args, model, args.device, 1, args.steps),
            f"wm_train_log_every_{args.log_every}_ms": wm_train_step_ms(
                args, model, args.device, args.log_every, args.steps
            ),
        }
        row["wm_train_over_bare"] = row["wm_train_ms"] / row["bare_ms"]
        results[model] = row
        print(f"{model}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        if args.trace:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
            prof = profile(activities=activities)
            wm_train_step_ms(args, model, args.device, 1, args.trace_steps, profiler=prof)
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(args.trace) / f"wm_train_{model}.json"))
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
