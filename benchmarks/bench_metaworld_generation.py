"""Expert-demonstration generation throughput (frames/s, one process) per camera setting.

Usage: python benchmarks/bench_metaworld_generation.py [--tasks reach-v3,pick-place-v3,door-open-v3] [--episodes 3]

Each setting rolls out MetaWorld's scripted experts on the same (task, seed, layout) list through the
generator's own ``record_expert_episode``; env construction is excluded, rendering is included.
The figure reported is the median over episodes of frames / wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from world_modality.sim.metaworld.env import MetaWorldEnv, RenderSettings
from world_modality.sim.metaworld.generate import record_expert_episode
from world_modality.sim.metaworld.tasks import resolve_tasks

SETTINGS = {
    "corner2 128px fast": RenderSettings.preset("fast", cameras=("corner2",)),
    "corner2 128px default quality": RenderSettings.preset("default", cameras=("corner2",)),
    "corner2+gripperPOV 128px fast": RenderSettings.preset("fast", cameras=("corner2", "gripperPOV")),
    "corner2 224px fast": RenderSettings.preset("fast", cameras=("corner2",), width=224, height=224),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="reach-v3,pick-place-v3,door-open-v3")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per task and setting")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    results = {}
    for name, render in SETTINGS.items():
        rates = []
        for task in resolve_tasks(args.tasks):
            env = MetaWorldEnv(task, seed=0, render=render)
            for layout in range(args.episodes):
                start = time.perf_counter()
                episode, _ = record_expert_episode(env, task, layout)
                rates.append(len(episode["action"]) / (time.perf_counter() - start))
            env.close()
        results[name] = statistics.median(rates)
        print(f"{name:34s} {results[name]:8.1f} frames/s  (median of {len(rates)} episodes)", flush=True)
    for name, fps in results.items():
        print(f"{name:34s} {fps / results['corner2 128px default quality']:5.2f}x default quality")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "frames_per_s": results}, f, indent=2)


if __name__ == "__main__":
    main()
