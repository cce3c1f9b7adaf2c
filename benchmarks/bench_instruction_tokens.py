"""Tokenising a training batch's instructions: the tokenizer alone vs `CachedTokenizer` (issue 38, item 2).

Usage: python benchmarks/bench_instruction_tokens.py [--batch-size 64] [--tasks MT10] [--calls 200] [--json out.json]

A `smolvla_world` training step tokenises the instruction of each of its rows (LeRobot's tokenizer step, padded to
the batch's longest, as SmolVLA's `pad_language_to`). A batch drawn from a few tasks repeats its instructions;
`CachedTokenizer` tokenises only the distinct ones, once per set of them, and gathers the rows (the same tokens).
Times both on batches drawn uniformly from the tasks' instructions with the tokenizer of the small SmolVLM2 (the
MT10 VLA file's backbone); median over --calls batches per arm, arms alternated. Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from provenance import stamp, today, write_figures
from transformers import AutoTokenizer

from lerobot_policy_world_modality.common import CachedTokenizer
from world_modality.model_folders.smolvlm import write_smolvlm_folder
from world_modality.sim.metaworld.tasks import instruction, resolve_tasks

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tasks", default="MT10", help="MetaWorld tasks whose instructions the batches draw from")
    parser.add_argument("--calls", type=int, default=200, help="timed batches per arm")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    texts = [instruction(task) for task in resolve_tasks(args.tasks)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_smolvlm_folder(Path(scratch) / "smolvlm", "small")
        arms = {
            "tokenizer": AutoTokenizer.from_pretrained(str(folder)),
            "CachedTokenizer": CachedTokenizer(AutoTokenizer.from_pretrained(str(folder))),
        }
    settings = {"max_length": 48, "truncation": True, "padding": "longest", "return_tensors": "pt"}
    draw = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.calls):
        batch = [draw.choice(texts) for _ in range(args.batch_size)]
        outputs = {}
        for name, tokenizer in arms.items():
            start = time.perf_counter()
            outputs[name] = tokenizer(batch, **settings)
            times[name].append(time.perf_counter() - start)
        first, second = outputs.values()
        assert all(torch.equal(first[key], second[key]) for key in first), "the cached tokens differ"
    medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"{len(texts)} instructions, batch {args.batch_size}, median of {args.calls} batches (the same tokens):")
    for name, ms in medians.items():
        print(f"  {name}: {ms:.3f} ms")
    print(f"  speed-up: {medians['tokenizer'] / medians['CachedTokenizer']:.1f}x")
    write_figures(
        args.json or REPO / "benchmarks" / "results" / f"instruction_tokens_cpu_{today()}.json",
        {
            "benchmark": "bench_instruction_tokens",
            **stamp("cpu"),
            "settings": {**vars(args), "json": None, "instructions": len(texts)},
            "median_ms": medians,
        },
    )


if __name__ == "__main__":
    main()
