"""Discrete world tokens: a k-means codebook fitted on a latent cache, and one token id per frame.

A tokens folder (default ``<latents>/tokens-k<K>-seed<S>/``) holds ``tokens.safetensors`` (``ids``
int64 [N], ``centroids`` float32 [K, D]) and ``spec.json`` (the `TokenSpec`, which names the latent
cache's spec hash and dataset fingerprint, plus usage statistics); both are verified on load.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world_tokens import (
    SPEC_FILE,
    TOKENS_FILE,
    TokenSpec,
    codebook_perplexity,
    codebook_usage,
    nearest_code,
)
from world_modality.atomic_io import atomic_write_json, output_folder, save_tensors_atomic
from world_modality.locks import writer_lock

TOKENS_KIND = "world tokens"  # its folder's `atomic_io.OUTPUT_MARKER`


def fit_tokens(
    cache: LatentCache | str | Path, codebook_size: int, seed: int = 0, out: str | Path | None = None
) -> Path:
    """Fit k-means with ``codebook_size`` codes on the cache's latents; write ids and codebook; return the folder."""
    from sklearn.cluster import MiniBatchKMeans

    cache = cache if isinstance(cache, LatentCache) else LatentCache.load(cache)
    if not 1 <= codebook_size <= len(cache):
        raise InputError(
            f"codebook size must be between 1 and the number of frames ({len(cache)}), got {codebook_size}"
        )
    spec = TokenSpec(cache.spec.spec_hash(), cache.dataset_fingerprint, len(cache), cache.dim, codebook_size, seed)
    with writer_lock(out or cache.path / f"tokens-k{codebook_size}-seed{seed}") as folder:
        x = cache.z.float().numpy()
        kmeans = MiniBatchKMeans(
            n_clusters=codebook_size, random_state=seed, n_init=3, batch_size=min(len(x), 4096)
        ).fit(x)
        centroids = torch.from_numpy(kmeans.cluster_centers_.astype(np.float32))
        ids = nearest_code(cache.z, centroids)
        output_folder(folder, TOKENS_KIND)
        save_tensors_atomic(
            {"ids": ids, "centroids": centroids}, folder / TOKENS_FILE, {"token_spec_hash": spec.spec_hash()}
        )
        atomic_write_json(
            folder / SPEC_FILE,
            {
                "tokens": asdict(spec),
                "token_spec_hash": spec.spec_hash(),
                "latents": str(cache.path),
                "usage": codebook_usage(ids, codebook_size),
                "perplexity": codebook_perplexity(ids, codebook_size),
            },
        )
    return folder
