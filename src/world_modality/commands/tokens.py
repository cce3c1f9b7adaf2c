"""``wm tokens``: a k-means codebook over cached latents, and a world token per frame."""

from __future__ import annotations

import argparse

from world_modality.choices import COUNT
from world_modality.commands import add_common, add_no_verify


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="fit discrete world tokens (k-means) on cached latents",
        description=(
            "Fit a k-means codebook (scikit-learn MiniBatchKMeans) on a latent cache made by `wm latents` and store "
            "one token id per frame with the codebook, by default in LATENTS_DIR/tokens-k<K>-seed<S>/. Prints "
            "codebook usage (fraction of codes used) and perplexity."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("latents", metavar="LATENTS_DIR", help="latent cache folder")
    parser.add_argument("--codebook-size", type=COUNT, required=True, metavar="K", help="number of codes")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="tokens folder; unset: LATENTS_DIR/tokens-k<K>-seed<S>"
    )
    add_common(parser)
    add_no_verify(parser)
    parser.set_defaults(handler=_tokens)


def _tokens(args) -> int:
    from lerobot_policy_world_modality.latent_cache import LatentCache
    from lerobot_policy_world_modality.world_tokens import WorldTokens
    from world_modality.tokens import fit_tokens

    cache = LatentCache.load(args.latents)
    path = fit_tokens(cache, args.codebook_size, args.seed, out=args.out)
    tokens = WorldTokens.load(path, latents=cache)
    print(f"tokens written to {path}")
    print(tokens.describe())
    return 0
