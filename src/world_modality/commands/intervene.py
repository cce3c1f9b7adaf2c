"""``wm intervene``: offline check of whether a world-memory policy uses its memory."""

from __future__ import annotations

import argparse

from lerobot_policy_world_modality.memory_modes import INTERVENTION_MODES
from world_modality.choices import COUNT
from world_modality.commands import add_common, add_no_verify


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "intervene",
        help="validation action loss under memory interventions, relative to the predicted memory",
        description=(
            "Evaluate a model-F checkpoint's action loss on its held-out validation episodes (the ones `wm train` "
            "held out: per instruction, the last ceil(val_fraction * n) episodes) with the world memory replaced "
            "by each --mode, divided by the loss with the predicted memory (pred). Reading: ratio > 1 for "
            "zero/random/shuffle/signflip means the policy relies on the memory's content; ratio < 1 for oracle "
            "means better predictions would help. Random draws are seeded, so reruns agree."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint folder, its pretrained_model/ or a run folder (uses its last)")
    parser.add_argument("--dataset", required=True, help="the dataset the checkpoint was trained on")
    parser.add_argument("--latents", required=True, help="its latent cache (must have the checkpoint's encoder spec)")
    parser.add_argument("--mode", nargs="+", default=list(INTERVENTION_MODES), choices=INTERVENTION_MODES)
    parser.add_argument("--batch-size", type=COUNT, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--state-key", default=None, help="default: the checkpoint's (a different one is an error)")
    parser.add_argument("--action-key", default=None, help="default: the checkpoint's")
    parser.add_argument("--instruction-key", default=None, help="default: the checkpoint's")
    add_common(parser)
    add_no_verify(parser)
    parser.set_defaults(handler=_intervene)


def _intervene(args) -> int:
    import json
    from contextlib import ExitStack

    from world_modality.atomic_io import atomic_write_json
    from world_modality.locks import writer_lock
    from world_modality.training.intervene import format_table, intervene

    with ExitStack() as held:
        if args.json:  # refused now (another writer, not writable), not after the work
            held.enter_context(writer_lock(args.json, folder=False))
        result = intervene(
            args.checkpoint,
            args.dataset,
            args.latents,
            args.mode,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            keys={"state": args.state_key, "action": args.action_key, "instruction": args.instruction_key},
        )
        print(format_table(result))
        print(json.dumps(result, indent=2))
        if args.json:
            atomic_write_json(args.json, result)
    return 0
