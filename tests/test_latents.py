"""World-latent cache, `wm latents`, the history/future windows, discrete world tokens, and the
agreement between cached and online (rollout-time) latents."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lerobot_policy_world_modality.dataset_files import dataset_fingerprint
from lerobot_policy_world_modality.encoders import OnlineEncoder, StateEncoder
from lerobot_policy_world_modality.latent_cache import LatentCache, LatentCacheMismatch, tensors_metadata
from lerobot_policy_world_modality.world_tokens import TokensMismatch, WorldTokens, codebook_perplexity, codebook_usage
from world_modality.cli import main
from world_modality.data.readers import EpisodeReader
from world_modality.latents import LATENTS_DIR, compute_latents, probe_object_positions
from world_modality.tokens import fit_tokens

CAMERA = "observation.images.corner2"
ENV_STATE = "observation.environment_state"


@pytest.fixture(scope="module")
def episodes(metaworld_dataset):
    reader = EpisodeReader(metaworld_dataset, CAMERA)
    return reader.episodes


@pytest.fixture(scope="module")
def state_cache(metaworld_dataset, state_latents) -> LatentCache:
    return LatentCache.load(state_latents, dataset=metaworld_dataset)


LEARNED = {"learned_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def learned_cache(metaworld_dataset) -> LatentCache:
    """Made by the command line, which trains the learned encoder (2 steps) on the dataset first."""
    argv = [
        "latents",
        str(metaworld_dataset),
        "--encoder",
        "learned",
        "--learned-steps",
        "2",
        "--seed",
        "3",
        "--batch-size",
        "32",
    ]
    assert main(argv) == 0
    path = compute_latents(
        metaworld_dataset, "learned", batch_size=32, progress=False, **LEARNED
    )  # finds the finished cache
    return LatentCache.load(path, dataset=metaworld_dataset)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Tiny DINOv2 and V-JEPA 2 models built from configs in code, saved like a user's real checkpoints."""
    from transformers import Dinov2Config, Dinov2Model, VJEPA2Config, VJEPA2Model

    root = tmp_path_factory.mktemp("checkpoints")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        Dinov2Model(
            Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
        ).save_pretrained(root / "dinov2")
        VJEPA2Model(
            VJEPA2Config(
                crop_size=32,
                patch_size=8,
                tubelet_size=2,
                frames_per_clip=4,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                pred_hidden_size=32,
                pred_num_hidden_layers=1,
                pred_num_attention_heads=2,
            )
        ).save_pretrained(root / "vjepa2")
    return root


def _episode_frames(dataset, key=CAMERA, episodes: slice = slice(None)) -> list[np.ndarray]:
    reader = EpisodeReader(dataset, key)
    return reader.read(reader.episodes.iloc[episodes])


# --- computing caches ------------------------------------------------------------------------


def test_state_cache_is_the_standardised_privileged_state(metaworld_dataset, state_cache, capsys):
    states = np.concatenate(_episode_frames(metaworld_dataset, ENV_STATE))
    std = states.astype(np.float64).std(axis=0, ddof=1)
    expected = (states - states.mean(axis=0)) / np.where(std < 1e-6, 1.0, std)
    assert state_cache.z.dtype == torch.float16 and state_cache.z.shape == (len(states), 39)
    torch.testing.assert_close(state_cache.z.float(), torch.from_numpy(expected).float(), atol=2e-3, rtol=1e-3)
    assert state_cache.spec.name == "state" and state_cache.spec.camera_key == ENV_STATE
    assert state_cache.spec.render["width"] == 64  # the dataset's render settings travel in the spec
    assert state_cache.path == metaworld_dataset.resolve() / LATENTS_DIR / f"state-{state_cache.spec.spec_hash()}"
    assert Path(state_cache.spec.checkpoint_path).parent == state_cache.path.parent  # fitted statistics beside it
    # The command finds the finished cache, does nothing and prints its summary.
    capsys.readouterr()
    assert main(["latents", str(metaworld_dataset), "--encoder", "state"]) == 0
    printed = capsys.readouterr().out
    assert (
        "nothing to do" in printed and str(state_cache.path) in printed and "199 frames x 39 dims, float16" in printed
    )


def test_episode_bounds_follow_the_dataset(episodes, state_cache):
    expected = episodes[["dataset_from_index", "dataset_to_index"]].to_numpy()
    assert state_cache.episode_bounds.tolist() == expected.tolist() == [[0, 51], [51, 95], [95, 147], [147, 199]]
    assert state_cache.episode_index.dtype == state_cache.frame_index.dtype == np.int64
    assert state_cache.episode_index[expected[:, 0]].tolist() == episodes["episode_index"].tolist()
    assert state_cache.frame_index[expected[:, 1] - 1].tolist() == (episodes["length"] - 1).tolist()


def test_learned_cache_trains_beside_it_and_reuses_the_encoder(metaworld_dataset, learned_cache, monkeypatch):
    spec = learned_cache.spec
    assert spec.name == "learned" and spec.camera_key == CAMERA and learned_cache.z.shape == (199, spec.output_dim)
    assert learned_cache.path.parent == metaworld_dataset.resolve() / LATENTS_DIR
    assert learned_cache.path.name == f"learned-{spec.spec_hash()}"
    assert Path(spec.checkpoint_path).parent == learned_cache.path.parent
    assert torch.isfinite(learned_cache.z.float()).all() and learned_cache.z.float().std() > 0

    def no_training(*args, **kwargs):
        raise AssertionError("the trained encoder folder should have been reused")

    monkeypatch.setattr("world_modality.latents.compute.train_learned_encoder", no_training)
    assert compute_latents(metaworld_dataset, "learned", batch_size=32, progress=False, **LEARNED) == learned_cache.path


@pytest.mark.parametrize("name, window", [("dinov2", 1), ("vjepa2", 4)])
def test_pretrained_encoders_from_local_folders(metaworld_dataset, tiny_checkpoints, tmp_path, capsys, name, window):
    out = tmp_path / name
    argv = [
        "latents",
        str(metaworld_dataset),
        "--encoder",
        name,
        "--encoder-path",
        str(tiny_checkpoints / name),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "50",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "199 frames x 32 dims" in printed
    cache = LatentCache.load(out, dataset=metaworld_dataset)
    assert cache.spec.temporal_window == window and cache.spec.input_size == 32
    assert torch.isfinite(cache.z.float()).all()


# --- online encoding equals the cache --------------------------------------------------------


ONLINE_EPISODES = slice(1, 3)  # two consecutive episodes (frames 51..146), so the reset between them counts


def _online_latents(cache: LatentCache, dataset, key=CAMERA) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of `ONLINE_EPISODES` encoded frame by frame at 'rollout', and the cached ones."""
    online = OnlineEncoder(cache.spec)
    out = []
    for inputs in _episode_frames(dataset, key, ONLINE_EPISODES):
        online.reset()
        out += [online(x) for x in inputs]
    lo, hi = cache.episode_bounds[ONLINE_EPISODES.start, 0], cache.episode_bounds[ONLINE_EPISODES.stop - 1, 1]
    return torch.cat(out), cache.z[lo:hi]


def test_online_encoding_matches_the_cache_learned(metaworld_dataset, learned_cache):
    online, cached = _online_latents(learned_cache, metaworld_dataset)
    assert online.dtype == torch.float16 and len(online) == 96
    torch.testing.assert_close(online, cached, atol=2e-3, rtol=2e-3)


def test_online_encoding_matches_the_cache_vjepa2_window_4(metaworld_dataset, tiny_checkpoints, tmp_path):
    path = compute_latents(
        metaworld_dataset, "vjepa2", tiny_checkpoints / "vjepa2", out=tmp_path / "v", batch_size=40, progress=False
    )
    cache = LatentCache.load(path, dataset=metaworld_dataset)
    assert cache.spec.temporal_window == 4
    torch.testing.assert_close(*_online_latents(cache, metaworld_dataset), atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="temporal_window: expected 4, got 1"):
        OnlineEncoder(cache.spec, temporal_window=1)


def test_online_encoding_matches_the_cache_state(metaworld_dataset, state_cache):
    torch.testing.assert_close(*_online_latents(state_cache, metaworld_dataset, ENV_STATE), atol=1e-3, rtol=1e-3)


# --- history / future windows ----------------------------------------------------------------


def _counting_cache(state_cache: LatentCache) -> LatentCache:
    """The state cache's layout with z[i] = i, so window contents reveal the frame indices."""
    z = torch.arange(len(state_cache), dtype=torch.float16).unsqueeze(1).repeat(1, 3)
    return LatentCache(state_cache.path, state_cache.spec, "x", z, state_cache.episode_index, state_cache.frame_index)


def test_windows_at_episode_boundaries(state_cache):
    cache = _counting_cache(state_cache)  # episodes [0, 51), [51, 95), [95, 147), [147, 199)
    w = cache.windows(torch.tensor([0, 1, 50, 51, 94, 198]), history_len=3, num_future=2)
    assert w.z_history.dtype == w.z_future.dtype == torch.float32
    assert w.z_history.shape == (6, 3, 3) and w.z_future.shape == (6, 2, 3)
    assert w.history_mask.dtype == w.future_mask.dtype == torch.bool
    assert w.z_history[..., 0].tolist() == [
        [0, 0, 0],
        [0, 0, 1],
        [48, 49, 50],
        [51, 51, 51],
        [92, 93, 94],
        [196, 197, 198],
    ]
    assert w.history_mask.tolist() == [
        [False, False, True],
        [False, True, True],
        [True, True, True],
        [False, False, True],
        [True, True, True],
        [True, True, True],
    ]
    assert w.z_future[..., 0].tolist() == [[1, 2], [2, 3], [50, 50], [52, 53], [94, 94], [198, 198]]
    assert w.future_mask.tolist() == [
        [True, True],
        [True, True],
        [False, False],
        [True, True],
        [False, False],
        [False, False],
    ]
    assert (w.z_history[:, :, 1:] == w.z_history[:, :, :1]).all()  # whole latent rows are gathered


def test_windows_on_real_latents_and_bad_indices(state_cache):
    t = torch.tensor([5, 60, 100])
    w = state_cache.windows(t, history_len=4, num_future=3)
    torch.testing.assert_close(w.z_history[:, -1], state_cache.z[t].float())
    torch.testing.assert_close(w.z_future[:, 0], state_cache.z[t + 1].float())
    assert state_cache.windows(t, 1, 0).z_future.shape == (3, 0, 39)
    with pytest.raises(IndexError, match=r"\[0, 199\)"):
        state_cache.windows(torch.tensor([199]), 2, 2)
    with pytest.raises(ValueError, match="history_len"):
        state_cache.windows(t, 0, 2)


# --- loud mismatches -------------------------------------------------------------------------


def test_fingerprint_ignores_world_latents(metaworld_dataset, state_cache):
    before = dataset_fingerprint(metaworld_dataset)
    (metaworld_dataset / LATENTS_DIR / "stray.txt").write_text("x")
    assert dataset_fingerprint(metaworld_dataset) == before == state_cache.dataset_fingerprint


def test_cache_of_another_dataset_is_rejected(metaworld_dataset, state_cache, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(metaworld_dataset, changed, ignore=shutil.ignore_patterns(LATENTS_DIR))
    (changed / "data" / "chunk-000" / "file-001.parquet").write_bytes(b"extra")
    with pytest.raises(
        LatentCacheMismatch,
        match=rf"dataset fingerprint \(cache vs dataset\): '{state_cache.dataset_fingerprint}' vs '[0-9a-f]+'",
    ):
        LatentCache.load(state_cache.path, dataset=changed)
    info = json.loads((changed / "meta" / "info.json").read_text())
    (changed / "meta" / "info.json").write_text(json.dumps({**info, "total_frames": 150}))
    with pytest.raises(LatentCacheMismatch, match=r"frames \(cache vs dataset\): 199 vs 150"):
        LatentCache.load(state_cache.path, dataset=changed)


def test_tampered_cache_is_rejected(state_cache, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(state_cache.path, copy)
    meta = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps({**meta, "num_frames": 198}))
    with pytest.raises(LatentCacheMismatch, match=r"frames \(latents vs spec.json\): 199 vs 198"):
        LatentCache.load(copy)
    meta["encoder"]["output_dim"] = 40
    (copy / "spec.json").write_text(json.dumps(meta))
    with pytest.raises(
        LatentCacheMismatch,
        match=r"spec hash \(spec.json vs its encoder spec\).*dim \(latents vs encoder spec\): 39 vs 40",
    ):
        LatentCache.load(copy)


def test_expected_spec_is_enforced(state_cache):
    LatentCache.load(state_cache.path, expect_spec=state_cache.spec)
    other = replace(state_cache.spec, camera_key="observation.state")
    with pytest.raises(
        ValueError, match="camera_key: expected 'observation.state', got 'observation.environment_state'"
    ):
        LatentCache.load(state_cache.path, expect_spec=other)


def test_not_a_cache_or_encoder_folder(metaworld_dataset, tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a complete latent cache"):
        LatentCache.load(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [
        "latents",
        str(metaworld_dataset),
        "--encoder",
        "dinov2",
        "--encoder-path",
        str(empty),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected model_type 'wm_learned_encoder', found 'dinov2'"):
        compute_latents(metaworld_dataset, "learned", tiny_checkpoints / "dinov2", out=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="reads a camera"):
        compute_latents(metaworld_dataset, "dinov2", tiny_checkpoints / "dinov2", camera_key=ENV_STATE, progress=False)


def test_out_folder_of_another_encoder_is_not_overwritten(metaworld_dataset, state_cache, tiny_checkpoints):
    with pytest.raises(LatentCacheMismatch, match="already holds latents of another encoder"):
        compute_latents(metaworld_dataset, "dinov2", tiny_checkpoints / "dinov2", out=state_cache.path, progress=False)


# --- resume ----------------------------------------------------------------------------------


def test_interrupted_run_resumes_from_finished_chunks(metaworld_dataset, state_cache, tmp_path, monkeypatch):
    calls = []
    original = StateEncoder.encode_state

    def crashing(self, states):
        calls.append(len(states))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, states)

    monkeypatch.setattr(StateEncoder, "encode_state", crashing)
    out = tmp_path / "resumed"
    kwargs = dict(
        encoder_path=state_cache.spec.checkpoint_path, out=out, batch_size=1000, chunk_episodes=1, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        compute_latents(metaworld_dataset, "state", **kwargs)
    chunks = sorted(p.name for p in (out / "chunks").iterdir())
    assert chunks == ["episodes-000000-000001.safetensors", "episodes-000001-000002.safetensors"]
    assert not (out / "spec.json").exists()
    # A finished chunk is reused as it is: mark one so that its reuse is visible in the result.
    first = out / "chunks" / chunks[0]
    save_file({"z": torch.full_like(load_file(first)["z"], 7)}, first, metadata=tensors_metadata(first))

    calls.clear()
    monkeypatch.setattr(StateEncoder, "encode_state", lambda self, s: (calls.append(len(s)), original(self, s))[1])
    compute_latents(metaworld_dataset, "state", **kwargs)
    assert calls == [52, 52]  # only the two unfinished episodes were encoded
    cache = LatentCache.load(out, dataset=metaworld_dataset)
    assert (cache.z[:51] == 7).all()
    torch.testing.assert_close(cache.z[51:], state_cache.z[51:])
    assert not (out / "chunks").exists()


# --- probe -----------------------------------------------------------------------------------


def test_probe_scores_object_positions_on_held_out_episodes(metaworld_dataset, state_cache, learned_cache):
    targets = np.concatenate(_episode_frames(metaworld_dataset, ENV_STATE))[:, [4, 5, 6]]
    noise = torch.randn(len(targets), 8, generator=torch.Generator().manual_seed(0))

    def probe(z: torch.Tensor) -> float:
        cache = LatentCache(
            state_cache.path,
            state_cache.spec,
            state_cache.dataset_fingerprint,
            z.half(),
            state_cache.episode_index,
            state_cache.frame_index,
        )
        return probe_object_positions(cache, metaworld_dataset, holdout_every=2)

    assert probe(torch.cat([torch.from_numpy(targets) * 10, noise], dim=1)) > 0.99  # positions are linear in z
    assert probe(noise) < 0.1  # noise knows nothing about held-out episodes
    assert np.isfinite(probe_object_positions(learned_cache, metaworld_dataset, holdout_every=2))
    with pytest.raises(ValueError, match="at least 9 episodes"):
        probe_object_positions(state_cache, metaworld_dataset)


# --- world tokens ----------------------------------------------------------------------------


def test_usage_and_perplexity_values():
    ids = torch.tensor([0, 0, 1, 1])
    assert codebook_usage(ids, 4) == 0.5 and codebook_perplexity(ids, 4) == pytest.approx(2.0)
    assert codebook_perplexity(torch.tensor([3, 3, 3]), 8) == pytest.approx(1.0)
    assert codebook_perplexity(torch.arange(8), 8) == pytest.approx(8.0)


def test_tokens_fit_load_and_verify(state_cache, learned_cache, capsys):
    assert main(["tokens", str(state_cache.path), "--codebook-size", "8", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    path = state_cache.path / "tokens-k8-seed1"
    assert str(path) in printed and "usage" in printed and "perplexity" in printed
    tokens = WorldTokens.load(path, latents=state_cache)
    assert tokens.ids.dtype == torch.int64 and tokens.ids.shape == (199,)
    assert tokens.centroids.shape == (8, 39) and tokens.centroids.dtype == torch.float32
    counts = np.bincount(tokens.ids.numpy(), minlength=8) / 199
    p = counts[counts > 0]
    assert tokens.usage == pytest.approx((counts > 0).mean())
    assert tokens.perplexity == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert f"{tokens.perplexity:.2f}" in printed and 1.0 < tokens.perplexity <= 8
    assert torch.equal(tokens.assign(state_cache.z), tokens.ids)
    # Deterministic for a seed.
    again = WorldTokens.load(fit_tokens(state_cache, 8, seed=1, out=path.parent / "again"))
    assert torch.equal(again.ids, tokens.ids) and again.spec == tokens.spec
    with pytest.raises(
        TokensMismatch,
        match=rf"latent spec hash \(tokens vs latents\): '{state_cache.spec.spec_hash()}' vs '{learned_cache.spec.spec_hash()}'",
    ):
        WorldTokens.load(path, latents=learned_cache)
    with pytest.raises(ValueError, match="codebook size"):
        fit_tokens(state_cache, 1000)


def test_tampered_tokens_are_rejected(state_cache, tmp_path):
    path = fit_tokens(state_cache, 4, out=tmp_path / "t")
    meta = json.loads((path / "spec.json").read_text())
    (path / "spec.json").write_text(json.dumps({**meta, "tokens": {**meta["tokens"], "codebook_size": 5}}))
    with pytest.raises(TokensMismatch, match=r"centroids \(K, dim\): \(4, 39\) vs \(5, 39\)"):
        WorldTokens.load(path)


def test_nan_latents_are_refused_not_cached(metaworld_dataset, tmp_path, monkeypatch, capsys):
    """An encoder that gives NaN for some frames (NaN in the dataset, a broken encoder) ends `wm latents` with one
    paragraph, and no cache is written."""
    real = StateEncoder.encode_state

    def encode_state(self, states):
        z = real(self, states)
        z[3] = float("nan")
        return z

    monkeypatch.setattr(StateEncoder, "encode_state", encode_state)
    out = tmp_path / "nan"
    assert main(["latents", str(metaworld_dataset), "--encoder", "state", "--device", "cpu", "--out", str(out)]) == 2
    assert "the state encoder gave NaN latents for 1 frames" in capsys.readouterr().err
    assert not (out / "spec.json").exists()
