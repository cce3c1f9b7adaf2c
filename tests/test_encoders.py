"""World encoders: specs, tiny DINOv2 / V-JEPA 2 checkpoints loaded from folders, windows, online
encoding, the state encoder and the self-supervised learned encoder."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from transformers import Dinov2Config, Dinov2Model, VJEPA2Config, VJEPA2Model

from lerobot_policy_world_modality.encoders import (
    EncoderSpec,
    OnlineEncoder,
    build_encoder,
    encode_episode,
    fit_state_encoder,
    train_learned_encoder,
    window_frames,
    window_indices,
)

TINY_DINOV2 = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
TINY_VJEPA2 = dict(
    hidden_size=48,
    num_attention_heads=2,
    num_hidden_layers=2,
    mlp_ratio=2.0,
    crop_size=32,
    patch_size=8,
    frames_per_clip=4,
    tubelet_size=2,
    pred_hidden_size=24,
    pred_num_attention_heads=2,
    pred_num_hidden_layers=1,
    pred_mlp_ratio=2.0,
    num_pooler_layers=1,
)
RENDER = {"width": 48, "height": 48, "camera": "corner2", "msaa": False, "shadows": False, "reflections": False}


def _save(model_cls, config, path):
    torch.manual_seed(0)
    model_cls(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    return _save(Dinov2Model, Dinov2Config(**TINY_DINOV2), tmp_path_factory.mktemp("dinov2"))


@pytest.fixture(scope="module")
def vjepa2_dir(tmp_path_factory):
    return _save(VJEPA2Model, VJEPA2Config(**TINY_VJEPA2), tmp_path_factory.mktemp("vjepa2"))


def _frames(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _spec(**overrides):
    fields = dict(
        name="vjepa2",
        checkpoint_path="/ckpt/vjepa2",
        config_hash="0123456789abcdef",
        camera_key="observation.images.corner2",
        input_size=256,
        pooling="mean",
        output_dim=1024,
        temporal_window=4,
        render={"width": 128, "height": 128},
    )
    return EncoderSpec(**{**fields, **overrides})


# ---- spec ---------------------------------------------------------------------------------------


def test_spec_json_round_trip_and_stable_hash():
    spec = _spec()
    again = EncoderSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.spec_hash() == spec.spec_hash()
    assert spec.spec_hash() == "ee9ec013cbcb5f3b"  # canonical form must not drift: cached latents key on it
    assert _spec(render={"height": 128, "width": 128}).spec_hash() == spec.spec_hash()
    assert _spec(checkpoint_path="/moved/vjepa2").spec_hash() == spec.spec_hash()
    assert _spec(temporal_window=2).spec_hash() != spec.spec_hash()
    with pytest.raises(ValueError, match="unknown EncoderSpec fields"):
        EncoderSpec.from_dict({**spec.to_dict(), "window": 4})
    with pytest.raises(ValueError, match="unknown encoder name"):
        _spec(name="clip")


def test_check_compatible_names_both_values():
    stored = _spec()
    stored.check_compatible(_spec(checkpoint_path="/elsewhere"), "rollout")
    with pytest.raises(ValueError) as err:
        stored.check_compatible(_spec(temporal_window=1, camera_key="observation.images.topview"), "rollout")
    message = str(err.value)
    assert message.startswith("rollout:")
    assert "temporal_window: expected 4, got 1" in message
    assert "'observation.images.corner2'" in message and "'observation.images.topview'" in message


# ---- windows ------------------------------------------------------------------------------------


def test_window_semantics_at_episode_start():
    assert window_indices(5, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert window_indices(3, 1).tolist() == [[0], [1], [2]]
    episode = _frames(5, 4, 4)
    windows = window_frames(episode, 3)
    assert windows.shape == (5, 3, 4, 4, 3)
    np.testing.assert_array_equal(windows[0], np.stack([episode[0]] * 3))
    np.testing.assert_array_equal(windows[4], episode[2:5])
    assert torch.equal(window_frames(torch.from_numpy(episode), 3), torch.from_numpy(windows))


# ---- pretrained encoders from folders -----------------------------------------------------------


def test_dinov2_from_folder(dinov2_dir):
    cls = build_encoder("dinov2", checkpoint_path=dinov2_dir, render=RENDER)
    mean = build_encoder("dinov2", checkpoint_path=str(dinov2_dir), pooling="mean")
    assert cls.spec.output_dim == 32 and cls.spec.input_size == 32 and cls.spec.temporal_window == 1
    assert cls.spec.render == RENDER and cls.spec.dtype == "float16"
    frames = _frames(3, 2, 48, 48)  # resized to 32 inside
    z = cls.encode(frames)
    assert z.shape == (3, 32) and z.dtype == torch.float32
    assert torch.equal(z, cls.encode(torch.from_numpy(frames[:, -1:])))  # m = 1 uses the last frame
    assert not torch.allclose(z, mean.encode(frames))
    cls.batch_size = 2  # batching must not change results
    torch.testing.assert_close(cls.encode(frames), z)


def test_stored_spec_detects_a_different_model_at_the_same_path(dinov2_dir, tmp_path):
    spec = build_encoder("dinov2", checkpoint_path=dinov2_dir).spec
    assert build_encoder(spec).spec == spec
    _save(Dinov2Model, Dinov2Config(**{**TINY_DINOV2, "num_hidden_layers": 1}), tmp_path)
    moved = EncoderSpec.from_dict({**spec.to_dict(), "checkpoint_path": str(tmp_path)})
    with pytest.raises(ValueError, match=f"config_hash: expected '{spec.config_hash}', got '[0-9a-f]+'"):
        build_encoder(moved)


def test_vjepa2_window_and_dims(vjepa2_dir):
    encoder = build_encoder("vjepa2", checkpoint_path=vjepa2_dir)
    assert encoder.spec.temporal_window == 4 and encoder.spec.output_dim == 48 and encoder.spec.input_size == 32
    frames = _frames(2, 4, 40, 40)
    z = encoder.encode(frames)
    assert z.shape == (2, 48)
    extra = np.concatenate([_frames(2, 2, 40, 40, seed=1), frames], axis=1)  # only the last m frames count
    torch.testing.assert_close(encoder.encode(extra), z)
    with pytest.raises(ValueError, match="temporal window 4 but got 3 frames"):
        encoder.encode(frames[:, :3])
    assert build_encoder("vjepa2", checkpoint_path=vjepa2_dir, temporal_window=2).encode(frames).shape == (2, 48)
    with pytest.raises(ValueError, match="tubelet_size=2 .* got 3"):
        build_encoder("vjepa2", checkpoint_path=vjepa2_dir, temporal_window=3)
    with pytest.raises(ValueError, match="frames_per_clip=4.* got 6"):
        build_encoder("vjepa2", checkpoint_path=vjepa2_dir, temporal_window=6)


def test_bad_checkpoint_folders(dinov2_dir, vjepa2_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="looks like a Hugging Face hub id.*local folder"):
        build_encoder("dinov2", checkpoint_path="facebook/dinov2-small")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_encoder("dinov2", checkpoint_path=tmp_path / "missing")
    (tmp_path / "weights.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"expected .*config\.json.*found files: \['weights.txt'\]"):
        build_encoder("dinov2", checkpoint_path=tmp_path)
    with pytest.raises(ValueError, match="expected model_type 'vjepa2', found 'dinov2'"):
        build_encoder("vjepa2", checkpoint_path=dinov2_dir)
    (tmp_path / "config.json").write_text((vjepa2_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="expected weights"):
        build_encoder("vjepa2", checkpoint_path=tmp_path)
    with pytest.raises(ValueError, match="needs checkpoint_path"):
        build_encoder("dinov2")
    with pytest.raises(ValueError, match="unknown encoder 'clip'"):
        build_encoder("clip", checkpoint_path=dinov2_dir)


# ---- online encoding ----------------------------------------------------------------------------


def test_online_encoder_matches_offline_windows(vjepa2_dir):
    offline = build_encoder("vjepa2", checkpoint_path=vjepa2_dir, render=RENDER)
    episodes = [_frames(6, 40, 40, seed=s) for s in (1, 2)]
    expected = [encode_episode(offline, ep) for ep in episodes]
    assert expected[0].dtype == torch.float16 and expected[0].shape == (6, 48)
    torch.testing.assert_close(expected[0], offline.encode(window_frames(episodes[0], 4)).half(), rtol=1e-3, atol=1e-3)

    online = OnlineEncoder(offline.spec, temporal_window=4, render=RENDER)
    for _ in range(2):  # a second episode after reset starts from a fresh window
        online.reset()
        steps = [online(np.stack([ep[t] for ep in episodes])) for t in range(6)]
        got = torch.stack(steps, dim=1)  # [N envs, T, D]
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, torch.stack(expected), rtol=1e-3, atol=1e-3)
    online.reset()
    assert online(episodes[0][0]).shape == (1, 48)
    with pytest.raises(ValueError, match="call reset"):
        online(np.stack([episodes[0][1]] * 2))


def test_online_encoder_refuses_a_different_window(vjepa2_dir):
    spec = build_encoder("vjepa2", checkpoint_path=vjepa2_dir).spec
    with pytest.raises(ValueError, match="temporal_window: expected 4, got 1"):
        OnlineEncoder(spec, temporal_window=1)
    with pytest.raises(ValueError, match=r"render: expected \{\}, got \{'width': 64\}"):
        OnlineEncoder(spec, render={"width": 64})
    with pytest.raises(ValueError, match="temporal_window: expected 4, got 2"):
        build_encoder(spec, temporal_window=2)


# ---- state encoder ------------------------------------------------------------------------------


def test_state_encoder(tmp_path):
    rng = np.random.default_rng(0)
    states = rng.normal(3.0, 2.0, size=(500, 39))
    states[:, 10] = 0.5  # a dimension that never varies
    encoder = build_encoder("state", checkpoint_path=fit_state_encoder(states, tmp_path))
    assert encoder.spec.name == "state" and encoder.spec.output_dim == 39
    assert encoder.spec.camera_key == "observation.environment_state"
    z = encoder.encode_state(states)
    torch.testing.assert_close(z.mean(0), torch.zeros(39), atol=1e-4, rtol=0)
    assert torch.all(z[:, 10] == 0) and abs(z[:, 0].std().item() - 1) < 1e-3
    with pytest.raises(TypeError, match="encode_state"):
        encoder.encode(_frames(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"expected states \[B, 39\]"):
        encoder.encode_state(states[:, :4])
    online = OnlineEncoder(EncoderSpec.from_dict(encoder.spec.to_dict()))
    torch.testing.assert_close(online(states[0]), z[:1].half())


def test_an_encoder_says_what_it_reads_and_whether_it_is_fitted_on_the_dataset(tmp_path):
    """The code asks the encoder (`EncoderSpec.reads_states`, `encoder_kind`) instead of comparing its name."""
    from lerobot_policy_world_modality.encoders.registry import ENCODERS
    from lerobot_policy_world_modality.encoders.spec import ENCODER_KINDS, encoder_kind
    from lerobot_policy_world_modality.errors import InputError

    assert tuple(ENCODER_KINDS) == tuple(ENCODERS)
    assert [name for name, kind in ENCODER_KINDS.items() if kind.reads_states] == ["state"]
    assert [name for name, kind in ENCODER_KINDS.items() if kind.fits_on_dataset] == ["state", "learned"]
    state = build_encoder("state", checkpoint_path=fit_state_encoder(np.arange(12.0).reshape(4, 3), tmp_path))
    frames = EncoderSpec("dinov2", None, "hash", "observation.images.top", 224, "cls", 8)
    assert state.spec.reads_states and not frames.reads_states
    with pytest.raises(InputError, match="unknown encoder name 'sonar'"):
        encoder_kind("sonar")


def test_state_latents_stay_finite_in_float16(tmp_path):
    """A dimension that barely varied in training (std just above the floor) standardises a small shift at rollout
    into a value past float16's range: the stored latent saturates at float16's largest value instead of becoming inf
    (which turned the policy's actions into NaN); in-range dimensions are stored as before."""
    rng = np.random.default_rng(0)
    states = rng.normal(0.0, 1.0, size=(200, 39))
    states[:, 5] = 0.25 + rng.normal(0.0, 2e-6, size=200)  # e.g. a quaternion component the demos never turned
    spec = build_encoder("state", checkpoint_path=fit_state_encoder(states, tmp_path)).spec
    online = OnlineEncoder(EncoderSpec.from_dict(spec.to_dict()))
    shifted = states[:2].copy()
    shifted[0, 5] += 0.5
    shifted[1, 5] -= 0.5
    z = online(shifted)
    assert z.dtype == torch.float16 and torch.isfinite(z).all()
    assert z[0, 5] == torch.finfo(torch.float16).max and z[1, 5] == -torch.finfo(torch.float16).max
    exact = online.encoder.encode_state(shifted)
    torch.testing.assert_close(z[:, :5], exact[:, :5].half(), rtol=0, atol=0)
    nan = online(np.full((1, 39), np.nan))
    assert nan.isnan().all()  # NaN is not hidden: a rollout stops the episode that meets it


# ---- learned encoder ----------------------------------------------------------------------------


def _moving_squares(num_episodes, length=20, size=32, seed=0):
    """Episodes over one textured scene: a red 'object' square moving between random points (its
    position is the probe target) and a cyan 'arm' square on the same path in every episode."""
    rng = np.random.default_rng(seed)
    side = size // 8
    background = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    arm_path = rng.uniform(0, size - side, size=(2, 2))
    episodes, positions = [], []
    for _ in range(num_episodes):
        path = rng.uniform(0, size - side, size=(2, 2))
        frames = np.repeat(background[None], length, axis=0)
        a = np.linspace(0, 1, length)[:, None]
        obj, arm = (1 - a) * path[0] + a * path[1], (1 - a) * arm_path[0] + a * arm_path[1]
        for t in range(length):
            (ay, ax), (oy, ox) = arm[t].astype(int), obj[t].astype(int)
            frames[t, ay : ay + side, ax : ax + side] = (40, 200, 220)
            frames[t, oy : oy + side, ox : ox + side] = (230, 40, 40)
        episodes.append(frames)
        positions.append(obj)
    return episodes, positions


def test_learned_encoder_is_deterministic(tmp_path, one_thread):
    episodes, _ = _moving_squares(6, length=8)
    options = dict(latent_dim=16, steps=3, input_size=32, batch_size=8, progress=False)
    dirs = [
        train_learned_encoder(episodes, tmp_path / name, seed=seed, **options)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    configs = [json.loads((d / "config.json").read_text()) for d in dirs]
    assert configs[0] == configs[1]
    assert (dirs[0] / "model.safetensors").read_bytes() == (dirs[1] / "model.safetensors").read_bytes()
    assert configs[0]["weights_sha256"] != configs[2]["weights_sha256"]
    (dirs[2] / "model.safetensors").write_bytes((dirs[0] / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the weights_sha256"):
        build_encoder("learned", checkpoint_path=dirs[2])


def test_learned_encoder_latents_carry_object_positions(tmp_path, one_thread):
    episodes, positions = _moving_squares(48)
    train, held_out = slice(0, 36), slice(36, 48)

    def probe_r2(steps):
        path = train_learned_encoder(
            episodes[train],
            tmp_path / str(steps),
            latent_dim=32,
            steps=steps,
            input_size=32,
            batch_size=32,
            progress=False,
        )
        encoder = build_encoder("learned", checkpoint_path=path, render=RENDER)
        assert encoder.spec.name == "learned" and encoder.spec.output_dim == 32 and encoder.spec.input_size == 32
        latents = [encode_episode(encoder, ep).float().numpy() for ep in episodes]
        probe = Ridge(alpha=1e-2).fit(np.concatenate(latents[train]), np.concatenate(positions[train]))
        return probe.score(np.concatenate(latents[held_out]), np.concatenate(positions[held_out]))

    # Over 12 seeds x data sets, 150 steps gave held-out R^2 0.82-0.99; untrained nets stay below 0.
    untrained, trained = probe_r2(0), probe_r2(150)
    assert trained > 0.6 and untrained < 0.3, (
        f"held-out linear-probe R^2: trained {trained:.3f}, untrained {untrained:.3f}"
    )
