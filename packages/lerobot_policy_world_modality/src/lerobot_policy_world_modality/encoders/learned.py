"""The project's own image encoder: a small keypoint CNN trained self-supervised on dataset frames
(the offline default when no pretrained weights are on disk).

Objective: temporal InfoNCE (a frame and one a few steps later in the same episode are positives,
every other frame in the batch a negative), plus a light reconstruction of a 16x16 thumbnail from the
latent so that static scene content (object and goal layout) stays in it, plus VICReg's
variance-covariance terms on the latent so that its dimensions are decorrelated and well scaled
(linear probes need little regularisation). The trunk ends in a spatial soft-argmax, so image
positions are explicit features.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from lerobot_policy_world_modality.encoders.base import (
    DEFAULT_CAMERA_KEY,
    ImageEncoder,
    config_hash,
    preprocess_images,
    read_checkpoint_config,
)
from lerobot_policy_world_modality.encoders.spec import EncoderSpec
from lerobot_policy_world_modality.errors import InputError

LEARNED_MODEL_TYPE = "wm_learned_encoder"
WEIGHTS_FILE = "model.safetensors"
_IMAGE_MEAN = (0.5, 0.5, 0.5)
_IMAGE_STD = (0.5, 0.5, 0.5)
_THUMBNAIL = 16
_CHANNELS = (16, 32, 32, 32)
_KEYPOINTS = 32


class KeypointCNN(nn.Module):
    """Conv trunk (the first two layers stride 2) -> per-channel soft-argmax keypoints (x, y) and
    mean-pooled features -> linear latent."""

    def __init__(self, latent_dim: int, channels: Sequence[int] = _CHANNELS, keypoints: int = _KEYPOINTS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i < 2 else 1, padding=1), nn.ReLU()]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.keypoint_logits = nn.Conv2d(c_in, keypoints, 1)
        self.head = nn.Linear(2 * keypoints + c_in, latent_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> latents [B, latent_dim]."""
        features = self.trunk(pixels)
        attention = self.keypoint_logits(features).flatten(2).softmax(dim=-1)  # [B, K, H*W]
        h, w = features.shape[-2:]
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=pixels.device),
            torch.linspace(-1, 1, w, device=pixels.device),
            indexing="ij",
        )
        points = torch.cat([attention @ xs.reshape(-1, 1), attention @ ys.reshape(-1, 1)], dim=-1).flatten(1)
        return self.head(torch.cat([points, features.mean(dim=(2, 3))], dim=1))


class LearnedEncoder(ImageEncoder):
    """A trained `KeypointCNN` on the last frame."""

    def __init__(self, net: KeypointCNN, spec: EncoderSpec, device: str | torch.device, batch_size: int) -> None:
        super().__init__(spec, device, _IMAGE_MEAN, _IMAGE_STD, batch_size)
        self.net = net.to(self.device).eval()

    @classmethod
    def load(
        cls,
        checkpoint_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        camera_key: str = DEFAULT_CAMERA_KEY,
        input_size: int | None = None,
        temporal_window: int = 1,
        pooling: str = "keypoints",
        dtype: str = "float16",
        render: dict[str, Any] | None = None,
        batch_size: int = 256,
    ) -> LearnedEncoder:
        """Load a folder written by `train_learned_encoder` (weights checked against the config's digest)."""
        path, config = read_checkpoint_config(checkpoint_path, LEARNED_MODEL_TYPE)
        if input_size not in (None, config["input_size"]):
            raise InputError(
                f"{path}: the learned encoder was trained at input_size {config['input_size']}, got {input_size}"
            )
        if (temporal_window, pooling) != (1, "keypoints"):
            raise InputError(
                f"the learned encoder has temporal_window 1 and pooling 'keypoints', got {temporal_window} and {pooling!r}"
            )
        weights = path / WEIGHTS_FILE
        if _sha256(weights) != config["weights_sha256"]:
            raise InputError(f"{weights} does not match the weights_sha256 in {path / 'config.json'}")
        net = KeypointCNN(config["latent_dim"], config["channels"], config["keypoints"])
        net.load_state_dict(load_file(weights))
        spec = EncoderSpec(
            name="learned",
            checkpoint_path=str(path),
            config_hash=config_hash(config),
            camera_key=camera_key,
            input_size=config["input_size"],
            pooling="keypoints",
            output_dim=config["latent_dim"],
            temporal_window=1,
            dtype=dtype,
            render=render or {},
        )
        return cls(net, spec, device, batch_size)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels[:, -1])


def train_learned_encoder(
    episodes_frames: Sequence[np.ndarray | torch.Tensor],
    out_dir: str | Path,
    latent_dim: int = 64,
    steps: int = 1500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    input_size: int = 64,
    batch_size: int = 64,
    max_offset: int = 4,
    lr: float = 1e-3,
    temperature: float = 0.1,
    recon_weight: float = 1.0,
    decorrelation_weight: float = 1.0,
    progress: bool = True,
) -> Path:
    """Train a `KeypointCNN` on episodes of uint8 frames [T, H, W, 3] and save it to ``out_dir``.

    Deterministic for a seed on a given device (the caller's RNG state is left untouched). Positives
    are frames at most ``max_offset`` steps apart in one episode. Returns ``out_dir``, loadable with
    ``build_encoder("learned", checkpoint_path=out_dir)``.
    """
    device = torch.device(device)
    episodes = [torch.as_tensor(ep) for ep in episodes_frames]
    if not any(len(ep) >= 2 for ep in episodes):
        raise InputError("train_learned_encoder needs at least one episode of two or more frames")
    for ep in episodes:
        if ep.dtype != torch.uint8 or ep.ndim != 4 or ep.shape[-1] != 3:
            raise InputError(f"expected uint8 episode frames [T, H, W, 3], got {ep.dtype} {tuple(ep.shape)}")
    mean = torch.tensor(_IMAGE_MEAN, device=device)
    std = torch.tensor(_IMAGE_STD, device=device)
    images = torch.cat(
        [preprocess_images(chunk, input_size, mean, std).half() for ep in episodes for chunk in ep.split(512)]
    )
    lengths = torch.tensor([len(ep) for ep in episodes])
    ends = lengths.cumsum(0)
    starts = ends - lengths
    episode_of = torch.repeat_interleave(torch.arange(len(episodes)), lengths)
    anchors = torch.nonzero(lengths[episode_of] >= 2).squeeze(1)

    config: dict[str, Any] = {
        "model_type": LEARNED_MODEL_TYPE,
        "latent_dim": latent_dim,
        "input_size": input_size,
        "channels": list(_CHANNELS),
        "keypoints": _KEYPOINTS,
        "image_mean": list(_IMAGE_MEAN),
        "image_std": list(_IMAGE_STD),
    }
    previous_determinism = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            net = KeypointCNN(latent_dim, config["channels"], config["keypoints"]).to(device)
            projector = nn.Sequential(nn.Linear(latent_dim, 128), nn.ReLU(), nn.Linear(128, 64)).to(device)
            decoder = nn.Sequential(nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 3 * _THUMBNAIL**2)).to(device)
            params = [*net.parameters(), *projector.parameters(), *decoder.parameters()]
            optimizer = torch.optim.Adam(params, lr=lr)
            sampler = torch.Generator().manual_seed(seed)
            bar = tqdm(range(steps), desc="learned encoder", disable=not progress)
            for _ in bar:
                i = anchors[torch.randint(len(anchors), (batch_size,), generator=sampler)]
                j = _temporal_partner(i, starts[episode_of[i]], ends[episode_of[i]], max_offset, sampler)
                x = images[torch.cat([i, j]).to(images.device)].float()
                latents = net(x)
                contrastive = _info_nce(F.normalize(projector(latents), dim=1), temperature)
                thumbnails = F.adaptive_avg_pool2d(x, _THUMBNAIL).flatten(1)
                reconstruction = F.mse_loss(decoder(latents), thumbnails)
                decorrelation = _variance_covariance(latents)
                loss = contrastive + recon_weight * reconstruction + decorrelation_weight * decorrelation
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.set_postfix(
                    nce=f"{contrastive.item():.3f}",
                    rec=f"{reconstruction.item():.3f}",
                    vc=f"{decorrelation.item():.3f}",
                    refresh=False,
                )
        finally:
            torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS_FILE)
    config["weights_sha256"] = _sha256(out / WEIGHTS_FILE)
    config["training"] = {
        "objective": "temporal_infonce+thumbnail_reconstruction+variance_covariance",
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "max_offset": max_offset,
        "lr": lr,
        "temperature": temperature,
        "recon_weight": recon_weight,
        "decorrelation_weight": decorrelation_weight,
        "num_episodes": len(episodes),
        "num_frames": len(images),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _temporal_partner(
    i: torch.Tensor, start: torch.Tensor, end: torch.Tensor, max_offset: int, generator: torch.Generator
) -> torch.Tensor:
    """For each frame index i, a uniformly drawn other frame of its episode within max_offset steps."""
    lo = torch.maximum(start, i - max_offset)
    hi = torch.minimum(end - 1, i + max_offset)
    j = lo + (torch.rand(len(i), generator=generator) * (hi - lo)).long()  # hi - lo candidates besides i
    return j + (j >= i).long()


def _variance_covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's variance (per-dimension std >= 1) plus covariance (off-diagonal -> 0) terms."""
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (len(z) - 1)
    variance = F.relu(1 - cov.diagonal().clamp_min(1e-4).sqrt()).mean()
    covariance = (cov - torch.diag(cov.diagonal())).pow(2).sum() / len(cov)
    return variance + covariance


def _info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over 2B unit embeddings where rows b and b + B are positives."""
    n = len(z) // 2
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
