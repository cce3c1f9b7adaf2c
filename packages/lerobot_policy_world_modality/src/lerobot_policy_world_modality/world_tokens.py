"""Reading discrete world tokens (fitted by the pipeline's `wm tokens`): a k-means codebook over a latent
cache and one token id per frame, verified on load against each other and the latents.

A tokens folder holds ``tokens.safetensors`` (``ids`` int64 [N], ``centroids`` float32 [K, D]) and
``spec.json`` (the `TokenSpec`, naming the latent cache's spec hash and dataset fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from lerobot_policy_world_modality.encoders.spec import digest
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.latent_cache import LatentCache, tensors_metadata

TOKENS_FILE = "tokens.safetensors"
SPEC_FILE = "spec.json"
ALGORITHM = "sklearn.cluster.MiniBatchKMeans"


class TokensMismatch(InputError):
    """A tokens folder does not belong to the latents it is used with, or is inconsistent."""


@dataclass(frozen=True)
class TokenSpec:
    """What produced a set of world tokens."""

    latent_spec_hash: str
    dataset_fingerprint: str
    num_frames: int
    dim: int
    codebook_size: int
    seed: int
    algorithm: str = ALGORITHM

    def spec_hash(self) -> str:
        return digest(asdict(self))


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codes that at least one frame uses."""
    return len(torch.unique(ids)) / codebook_size


def codebook_perplexity(ids: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code frequencies: K when all codes are equally used, 1 when one code is."""
    p = torch.bincount(ids, minlength=codebook_size).double() / len(ids)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def nearest_code(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Token ids (int64 [...]) of latents [..., D]: the nearest centroid in Euclidean distance."""
    flat = z.reshape(-1, z.shape[-1]).float()
    ids = torch.cat([torch.cdist(chunk, centroids.to(flat.device)).argmin(dim=1) for chunk in flat.split(65536)])
    return ids.reshape(z.shape[:-1])


class WorldTokens:
    """Verified world tokens: ``ids`` int64 [N] (row = global frame index) and ``centroids`` float32 [K, D]."""

    def __init__(self, path: Path, spec: TokenSpec, ids: torch.Tensor, centroids: torch.Tensor) -> None:
        self.path = path
        self.spec = spec
        self.ids = ids
        self.centroids = centroids

    @classmethod
    def load(cls, path: str | Path, latents: LatentCache | str | Path | None = None) -> WorldTokens:
        """Load a tokens folder, checking its files against each other and, when given, against ``latents``."""
        path = Path(path).expanduser()
        if not (path / SPEC_FILE).is_file() or not (path / TOKENS_FILE).is_file():
            raise MissingFileError(
                f"{path} is not a tokens folder (expected {SPEC_FILE} and {TOKENS_FILE}); make one with `wm tokens`"
            )
        meta = json.loads((path / SPEC_FILE).read_text())
        spec = TokenSpec(**meta["tokens"])
        tensors = load_file(path / TOKENS_FILE)
        ids, centroids = tensors["ids"], tensors["centroids"]
        checks = [
            ("token spec hash (spec.json vs its spec)", meta["token_spec_hash"], spec.spec_hash()),
            (
                f"token spec hash ({TOKENS_FILE} vs spec.json)",
                tensors_metadata(path / TOKENS_FILE).get("token_spec_hash"),
                meta["token_spec_hash"],
            ),
            ("ids (frames)", tuple(ids.shape), (spec.num_frames,)),
            ("centroids (K, dim)", tuple(centroids.shape), (spec.codebook_size, spec.dim)),
            ("ids within [0, K)", bool(len(ids) == 0 or (ids.min() >= 0 and ids.max() < spec.codebook_size)), True),
        ]
        if latents is not None:
            cache = latents if isinstance(latents, LatentCache) else LatentCache.load(latents)
            checks += [
                ("latent spec hash (tokens vs latents)", spec.latent_spec_hash, cache.spec.spec_hash()),
                ("dataset fingerprint (tokens vs latents)", spec.dataset_fingerprint, cache.dataset_fingerprint),
                ("frames (tokens vs latents)", spec.num_frames, len(cache)),
                ("dim (tokens vs latents)", spec.dim, cache.dim),
            ]
        diffs = [f"{what}: {a!r} vs {b!r}" for what, a, b in checks if a != b]
        if diffs:
            raise TokensMismatch(
                f"world tokens {path} do not match: " + "; ".join(diffs) + ". Refit them with `wm tokens`."
            )
        return cls(path, spec, ids, centroids)

    @property
    def codebook_size(self) -> int:
        return self.spec.codebook_size

    @property
    def usage(self) -> float:
        return codebook_usage(self.ids, self.codebook_size)

    @property
    def perplexity(self) -> float:
        return codebook_perplexity(self.ids, self.codebook_size)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids of new latents [..., D] (e.g. encoded online at rollout)."""
        return nearest_code(z, self.centroids)

    def describe(self) -> str:
        """A few lines for the command line."""
        s = self.spec
        return "\n".join(
            [
                f"codebook    K={s.codebook_size}, dim {s.dim}, seed {s.seed} ({s.algorithm})",
                f"frames      {s.num_frames} (latents spec {s.latent_spec_hash})",
                f"usage       {self.usage:.3f} of codes used",
                f"perplexity  {self.perplexity:.2f} (of at most {s.codebook_size})",
            ]
        )
