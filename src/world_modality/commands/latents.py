"""``wm latents``: encode every frame of a dataset once and cache the world latents."""

from __future__ import annotations

import argparse

from lerobot_policy_world_modality.encoders.spec import ENCODER_NAMES
from world_modality.choices import COUNT
from world_modality.commands import add_common, add_no_verify


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "latents",
        help="compute and cache world latents for a dataset",
        description=(
            "Encode every frame of a LeRobot dataset with a world encoder and cache the latents (fp16) with the "
            "encoder's spec, by default in DATASET/world_latents/<encoder>-<spec hash>/. Without --encoder-path, "
            "'state' fits its statistics and 'learned' trains itself on the dataset first; 'dinov2' and 'vjepa2' "
            "need a local checkpoint folder. Interrupted runs resume: rerun the same command."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "dataset", metavar="DATASET", help="dataset folder, or a repo id already in the local LeRobot cache"
    )
    parser.add_argument("--encoder", required=True, choices=ENCODER_NAMES, help="world encoder")
    parser.add_argument("--encoder-path", default=None, metavar="DIR", help="local encoder checkpoint folder")
    parser.add_argument(
        "--camera-key",
        default=None,
        metavar="KEY",
        help="camera key; unset: the first camera (state: observation.environment_state). Two cameras side by side "
        "(wrist_mode=concat): KEY+CAMERA, e.g. observation.images.image+image2 (LIBERO agentview | wrist)",
    )
    parser.add_argument(
        "--temporal-window",
        type=COUNT,
        default=None,
        metavar="M",
        help="frames per latent; unset: the encoder's own (4 for vjepa2, else 1)",
    )
    parser.add_argument("--batch-size", type=COUNT, default=64, metavar="N", help="frames (windows) encoded per batch")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when present")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="cache folder; unset: DATASET/world_latents/<encoder>-<spec hash>"
    )
    parser.add_argument(
        "--learned-steps", type=COUNT, default=1500, metavar="N", help="training steps of the learned encoder"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the learned encoder's training")
    parser.add_argument(
        "--instruction-key",
        default="task",
        help="where the dataset keeps its instructions (LIBERO-format data: its rotation check renders their scenes)",
    )
    parser.add_argument(
        "--single-instruction",
        action="store_true",
        help="every episode really has the one instruction under --instruction-key: accept the dataset although another "
        "text column varies between episodes (refused otherwise: the instructions are likely there)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="then report a linear probe's R^2 from latents to object positions (MetaWorld datasets)",
    )
    add_common(parser)
    add_no_verify(parser)
    parser.set_defaults(handler=_latents)


def _latents(args) -> int:
    from lerobot_policy_world_modality.latent_cache import LatentCache
    from world_modality.latents import compute_latents, probe_object_positions

    path = compute_latents(
        args.dataset,
        args.encoder,
        encoder_path=args.encoder_path,
        camera_key=args.camera_key,
        temporal_window=args.temporal_window,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        learned_steps=args.learned_steps,
        seed=args.seed,
        instruction_key=args.instruction_key,
        single_instruction=args.single_instruction,
    )
    cache = LatentCache.load(path, dataset=args.dataset)
    print(f"latents cached in {path}")
    print(cache.describe())
    if args.probe:
        r2 = probe_object_positions(cache, args.dataset)
        print(f"object-position probe R^2 (ridge, held-out episodes): {r2:.3f}")
    return 0
