"""Training speed of SmolVLA-world under `wm train` beside LeRobot's SmolVLA under `lerobot-train` (issue 36, item 5).

GPU (the figures of benchmarks/README.md, "VLA training speed vs lerobot-train"; one command):

    python benchmarks/bench_vla_train_speed.py --size 500m --batch-size 32

CPU, in a few minutes: python benchmarks/bench_vla_train_speed.py --size tiny --batch-size 8 --steps 10 --warmup 3
--episodes-per-task 2 --tasks reach-v3,button-press-topdown-v3

Makes (or reuses, under --work) a MetaWorld expert dataset (MT10 x --episodes-per-task at --image-size px, --storage
image or video), its `state` latents and a random SmolVLM2 folder of --size (`write_smolvlm_folder`), then trains,
each arm in its own process for --warmup + --steps steps with the same batch, precision (`use_amp`, on by default on
CUDA, as LeRobot's mixed precision), optimizer preset (SmolVLA's), data-loading workers and image decoder (pyav):

- `lerobot E0`: `lerobot-train --policy.type=smolvla --policy.vlm_model_name=DIR` on the dataset (LeRobot's own
  loop: its DataLoader, Accelerator, update step);
- `wm E0`: `wm train --policy smolvla_world --set use_world_module=false` (LeRobot's SmolVLA, in `wm train`'s loop);
- `wm E2`: the same with the world module on (predicted memory from the `state` latents), for reference;
- `wm E2 compiled`: `wm E2` with the fast training step (`--compile`: the layer stacks compiled, the optimizer's
  update fused; issue 38). Its first steps wait for the compiler: give it --warmup enough to exclude them.

Every arm is timed the same way, from inside its process: the clock is read (after a CUDA synchronise) each time the
loop clips its gradients, which both loops do once per step, so an interval is one whole step (waiting for data,
forward, backward, optimizer, logging). Samples/s = batch / median interval over the timed steps (start-up and the
first --warmup steps excluded); GPU memory: the peak allocated during the steps. Arms run in --rounds alternating
rounds (the machine's speed drifts); the table gives each arm's median over rounds. Writes
benchmarks/results/vla_train_speed_<device>_<date>.json (device, date, commit, settings, per-arm figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from provenance import commit, device_name, today

REPO = Path(__file__).resolve().parents[1]
ARMS = ("lerobot E0", "wm E0", "wm E2", "wm E2 compiled")
# Policy settings both tools get for the tiny size (a CPU run in minutes); the other sizes train with SmolVLA's
# defaults (chunk 50, 10 denoising steps, images resized with padding to 512 px).
TINY_POLICY = {
    "chunk_size": 10,
    "n_action_steps": 10,
    "num_steps": 3,
    "resize_imgs_with_padding": [64, 64],
    "tokenizer_max_length": 16,
}

# Run in each arm's process before the tool: the clock read after every gradient clipping (one per step in both
# loops: accelerate's clip_grad_norm_ and `wm train` call torch's), written to the file named by argv[1] at exit;
# with a step number as argv[2] (0: none), that step (clip to clip) is profiled into argv[1] + ".profile.txt":
# Python functions by cumulative time (cProfile), then torch operators (torch.profiler, CPU and CUDA).
_TIMED = """
import atexit, cProfile, io, json, pstats, sys, time, torch
out, profiled_step = sys.argv.pop(1), int(sys.argv.pop(1))
times, peaks, profilers = [], [], []
clip = torch.nn.utils.clip_grad_norm_
def timed_clip(*args, **kwargs):
    norm = clip(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    times.append(time.perf_counter())
    if len(times) == profiled_step - 1:
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        profilers.extend([cProfile.Profile(), torch.profiler.profile(activities=activities)])
        for profiler in profilers:
            profiler.__enter__()
    elif len(times) == profiled_step:
        for profiler in reversed(profilers):
            profiler.__exit__(None, None, None)
        python = io.StringIO()
        pstats.Stats(profilers[0], stream=python).sort_stats("cumulative").print_stats(40)
        ops = profilers[1].key_averages()
        kernels = sum(e.self_device_time_total for e in ops) / 1000
        with open(out + ".profile.txt", "w") as f:
            f.write(f"step {profiled_step}: {1000 * (times[-1] - times[-2]):.1f} ms wall, {kernels:.1f} ms in CUDA kernels\\n")
            f.write(python.getvalue())
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            f.write(ops.table(sort_by=sort, row_limit=30))
    return norm
torch.nn.utils.clip_grad_norm_ = timed_clip
atexit.register(lambda: open(out, "w").write(json.dumps({"times": times, "peaks": peaks})))
"""
_LEROBOT_TRAIN = (
    _TIMED
    + """
from lerobot.scripts.lerobot_train import main
sys.argv = ["lerobot-train", *sys.argv[1:]]
main()
"""
)
_WM_TRAIN = (
    _TIMED
    + """
from world_modality.cli import main
sys.exit(main(sys.argv[1:]))
"""
)


def prepare(args) -> tuple[Path, Path, Path]:
    """The dataset, its `state` latents and the SmolVLM2 folder (made once under --work, reused after)."""
    from world_modality.latents import compute_latents
    from world_modality.model_folders.smolvlm import write_smolvlm_folder
    from world_modality.sim.metaworld.generate import generate_metaworld_dataset

    tasks = args.tasks.replace(",", "-")
    dataset = (
        args.dataset
        or args.work / "datasets" / f"{tasks}-{args.episodes_per_task}ep-{args.image_size}px-{args.storage}"
    )
    if args.dataset is None:
        generate_metaworld_dataset(
            dataset,
            args.tasks.split(",") if "," in args.tasks else args.tasks,
            args.episodes_per_task,
            image_size=args.image_size,
            storage=args.storage,
            workers=args.gen_workers,
        )
    latents = compute_latents(dataset, "state", device="cpu", out=args.work / "latents" / dataset.name, progress=False)
    vlm = write_smolvlm_folder(args.work / "smolvlm" / args.size, args.size)
    return Path(dataset), latents, vlm


def commands(arm: str, args, dataset: Path, latents: Path, vlm: Path, out: Path) -> tuple[str, list[str]]:
    """(the script run in the arm's process, its arguments)."""
    steps = args.warmup + args.steps + bool(args.profile)
    policy = dict(TINY_POLICY) if args.size == "tiny" else {}
    policy["use_amp"] = args.amp
    if arm == "lerobot E0":
        return _LEROBOT_TRAIN, [
            "--policy.type=smolvla",
            f"--policy.vlm_model_name={vlm}",
            f"--policy.device={args.device}",
            "--policy.push_to_hub=false",
            *(f"--policy.{k}={json.dumps(v).replace(' ', '')}" for k, v in policy.items()),
            "--dataset.repo_id=local/bench",
            f"--dataset.root={dataset}",
            "--dataset.video_backend=pyav",
            f"--batch_size={args.batch_size}",
            f"--steps={steps}",
            f"--num_workers={args.data_workers}",
            "--save_checkpoint=false",
            "--wandb.enable=false",
            f"--output_dir={out}",
        ]
    policy["use_world_module"] = arm.startswith("wm E2")
    return _WM_TRAIN, [
        "train",
        str(dataset),
        "--latents",
        str(latents),
        "--policy",
        "smolvla_world",
        "--set",
        f"vlm_model_name={vlm}",
        *(f"--set={k}={json.dumps(v)}" for k, v in policy.items()),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(steps),
        "--save-every",
        str(steps),
        "--data-workers",
        str(args.data_workers),
        "--val-fraction",
        "0",
        "--device",
        args.device,
        "--no-progress",
        *(["--compile"] if arm.endswith("compiled") else []),
        "--out",
        str(out),
    ]


def run_arm(arm: str, args, dataset: Path, latents: Path, vlm: Path, scratch: Path, round_index: int) -> dict:
    out = scratch / f"{arm.replace(' ', '-')}-{round_index}"
    script, arguments = commands(arm, args, dataset, latents, vlm, out)
    timings = args.work / "timings" / f"{out.name}.json"
    timings.parent.mkdir(parents=True, exist_ok=True)
    profiled_step = args.warmup + args.steps + 1 if args.profile and round_index == 0 else 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(timings), str(profiled_step), *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if proc.returncode != 0 or not timings.exists():
        raise RuntimeError(f"{arm} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    recorded = json.loads(timings.read_text())
    # the timed steps' intervals: from the end of step warmup to the end of step warmup + steps
    intervals = [b - a for a, b in zip(recorded["times"], recorded["times"][1:])][args.warmup - 1 :][: args.steps]
    if len(intervals) != args.steps:
        raise RuntimeError(f"{arm}: {len(recorded['times'])} steps timed, expected {args.warmup + args.steps}")
    if profiled_step:
        print(f"{arm}: profile of step {profiled_step} in {timings}.profile.txt", flush=True)
    step_s = statistics.median(intervals)
    return {
        "samples_per_s": args.batch_size / step_s,
        "step_ms_median": 1000 * step_s,
        "step_ms_p90": 1000 * statistics.quantiles(intervals, n=10)[-1],
        "peak_gpu_memory_gib": max(recorded["peaks"]) / 2**30 if recorded["peaks"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="500m", choices=("tiny", "small", "500m"), help="SmolVLM2 folder size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones (at least 1)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of all arms")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {ARMS}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the policy's use_amp (LeRobot's mixed precision); default: on on CUDA, off on CPU",
    )
    parser.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="data-loading processes of both tools (default: 4 on CUDA, lerobot-train's default; 0 on CPU)",
    )
    parser.add_argument("--dataset", type=Path, default=None, help="an existing MetaWorld dataset (else one is made)")
    parser.add_argument(
        "--tasks", default="MT10", help="MetaWorld tasks of the dataset made: MT10, or names with commas"
    )
    parser.add_argument("--episodes-per-task", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--storage", default="image", choices=("image", "video"))
    parser.add_argument(
        "--gen-workers", type=int, default=os.cpu_count(), help="simulator processes making the dataset"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "outputs" / "bench_vla_train_speed",
        help="where the dataset, latents and SmolVLM2 folder are made and reused",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="in the first round, profile one more step of each arm after the timed ones (cProfile and "
        "torch.profiler; the tables go beside the timings under --work)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one arm's process may take")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result file (default: benchmarks/results/vla_train_speed_<device>_<date>.json)",
    )
    args = parser.parse_args()
    args.amp = args.device.startswith("cuda") if args.amp is None else args.amp
    args.data_workers = (4 if args.device.startswith("cuda") else 0) if args.data_workers is None else args.data_workers
    arms = args.arms.split(",")
    if unknown := sorted(set(arms) - set(ARMS)):
        parser.error(f"unknown arm(s) {unknown}; expected some of {ARMS}")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's interval starts at the first step)")

    dataset, latents, vlm = prepare(args)
    rounds: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench_vla_train_speed_") as scratch:  # the runs' folders
        for round_index in range(args.rounds):
            for arm in arms:
                rounds[arm].append(run_arm(arm, args, dataset, latents, vlm, Path(scratch), round_index))
                print(
                    f"round {round_index + 1}/{args.rounds} {arm}: {rounds[arm][-1]['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
    results = {
        arm: {
            "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
            "step_ms_median": statistics.median(r["step_ms_median"] for r in rs),
            "step_ms_p90": statistics.median(r["step_ms_p90"] for r in rs),
            "peak_gpu_memory_gib": rs[0]["peak_gpu_memory_gib"] and max(r["peak_gpu_memory_gib"] for r in rs),
            "rounds": rs,
        }
        for arm, rs in rounds.items()
    }
    ratios = {}
    if "lerobot E0" in results:
        ratios = {
            f"{arm} / lerobot E0": results[arm]["samples_per_s"] / results["lerobot E0"]["samples_per_s"]
            for arm in results
            if arm != "lerobot E0"
        }

    device = device_name(args.device)
    date = today()
    print(
        f"\nVLA training speed: SmolVLM2 {args.size}, batch {args.batch_size}, use_amp {args.amp}, "
        f"{args.data_workers} data workers, {dataset.name}; {device}; median of {args.steps} steps after "
        f"{args.warmup}, {args.rounds} round(s)\n"
    )
    print("| arm | samples/s | step ms (median) | step ms (p90) | peak GPU memory GiB |\n|---|---:|---:|---:|---:|")
    for arm, r in results.items():
        memory = "-" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f}"
        print(f"| {arm} | {r['samples_per_s']:.1f} | {r['step_ms_median']:.1f} | {r['step_ms_p90']:.1f} | {memory} |")
    for name, ratio in ratios.items():
        target = {"wm E0": " (target >= 0.95, issue 36)", "wm E2 compiled": " (target >= 2, issue 38)"}
        print(f"{name}: {ratio:.3f}" + target.get(name.removesuffix(" / lerobot E0"), ""))

    path = args.json or REPO / "benchmarks" / "results" / (
        f"vla_train_speed_{''.join(c if c.isalnum() else '-' for c in device).strip('-').lower()}_{date}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    made = ("tasks", "episodes_per_task", "image_size", "storage", "gen_workers")  # what a dataset made had
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("json", "work", *(made if args.dataset else ()))
    }
    path.write_text(
        json.dumps(
            {
                "benchmark": "bench_vla_train_speed",
                "device": device,
                "date": date,
                "commit": commit(),
                "torch": torch.__version__,
                "command": " ".join(sys.argv),
                "settings": {**settings, "dataset": str(dataset)},
                "arms": results,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
