"""SmolVLA-world (`--policy.type=smolvla_world`): do-no-harm against LeRobot's SmolVLA, memory modes,
online world latents, checkpoints, and LeRobot's own `lerobot-train` / `lerobot-eval`.

Everything is offline and tiny: a SmolVLM2 folder written in code (`write_smolvlm_folder("tiny")`),
a learned world encoder trained for two steps, and the session's MetaWorld dataset.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import SUBPROCESS_ENV, CountingTokenizer
from lerobot_cli import REPO, lerobot_eval_metaworld, lerobot_train

CAMERA = "observation.images.corner2"
ENV_STATE = "observation.environment_state"
TINY = {
    "chunk_size": 4,
    "n_action_steps": 4,
    "num_steps": 3,
    "resize_imgs_with_padding": (64, 64),
    "max_state_dim": 8,
    "max_action_dim": 8,
    "tokenizer_max_length": 16,
}
TINY_WORLD = {
    "history_len": 2,
    "num_future": 2,
    "prophet_dim": 32,
    "prophet_heads": 2,
    "prophet_layers": 1,
    "cross_attn_heads": 2,
    "image_key": CAMERA,
}
TRAIN_CLI = [
    "--policy.resize_imgs_with_padding=[64,64]",
    "--policy.chunk_size=4",
    "--policy.n_action_steps=4",
    "--policy.num_steps=2",
    "--policy.max_state_dim=8",
    "--policy.max_action_dim=8",
    "--policy.history_len=2",
    "--policy.num_future=2",
    "--policy.prophet_dim=32",
    "--policy.prophet_heads=2",
    "--policy.prophet_layers=1",
    "--policy.cross_attn_heads=2",
    f"--policy.image_key={CAMERA}",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    return write_smolvlm_folder(tmp_path_factory.mktemp("smolvlm") / "tiny", "tiny")


@pytest.fixture(scope="module")
def latent_cache(metaworld_dataset, tmp_path_factory) -> Path:
    """A latent cache of a tiny learned encoder on the corner2 camera (its spec.json holds the spec)."""
    from world_modality.latents import compute_latents

    out = tmp_path_factory.mktemp("latents")
    return compute_latents(
        metaworld_dataset,
        "learned",
        camera_key=CAMERA,
        out=out / "cache",
        device="cpu",
        learned_steps=2,
        learned_options={"latent_dim": 16, "input_size": 32, "batch_size": 8},
        progress=False,
    )


@pytest.fixture(scope="module")
def spec(latent_cache) -> dict:
    from lerobot_policy_world_modality.latent_cache import LatentCache

    return LatentCache.load(latent_cache).spec.to_dict()


def _features(image_size=64):
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {
        "observation.state": PolicyFeature(FeatureType.STATE, (4,)),
        ENV_STATE: PolicyFeature(FeatureType.ENV, (39,)),
        CAMERA: PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)),
    }
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (4,))}


def _world_policy(vlm_folder, spec, seed=0, image_size=64, **overrides):
    from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy

    inputs, outputs = _features(image_size)
    config = SmolVLAWorldConfig(
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vlm_folder),
        encoder_spec=spec,
        device="cpu",
        **{**TINY, **TINY_WORLD, **overrides},
    )
    torch.manual_seed(seed)
    return SmolVLAWorldPolicy(config).eval()


def _plain_smolvla(vlm_folder):
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    inputs, outputs = _features()
    config = SmolVLAConfig(
        input_features=inputs, output_features=outputs, vlm_model_name=str(vlm_folder), device="cpu", **TINY
    )
    return SmolVLAPolicy(config).eval()


def _batch(vlm_folder, batch_size=3, seed=0, with_latents=True, image_size=64) -> dict:
    """A preprocessed batch: normalised state/action, images in [0, 1], tokenised task, cached latents."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
    from transformers import AutoTokenizer

    g = torch.Generator().manual_seed(seed)
    tasks = ["reach the goal\n", "pick up the puck\n", "open the drawer\n"]
    tokens = AutoTokenizer.from_pretrained(str(vlm_folder))(
        [tasks[i % len(tasks)] for i in range(batch_size)],
        padding="max_length",
        max_length=TINY["tokenizer_max_length"],
        truncation=True,
        return_tensors="pt",
    )
    batch = {
        "observation.state": torch.randn(batch_size, 4, generator=g),
        ENV_STATE: torch.randn(batch_size, 39, generator=g),
        CAMERA: torch.rand(batch_size, 3, image_size, image_size, generator=g),
        "action": torch.randn(batch_size, 4, 4, generator=g),
        "action_is_pad": torch.zeros(batch_size, 4, dtype=torch.bool),
        OBS_LANGUAGE_TOKENS: tokens["input_ids"],
        OBS_LANGUAGE_ATTENTION_MASK: tokens["attention_mask"].bool(),
    }
    if with_latents:
        batch |= {
            "observation.world_latents": torch.randn(batch_size, 2, 16, generator=g),
            "observation.world_latents_mask": torch.tensor([[False, True]] + [[True, True]] * (batch_size - 1)),
            "observation.world_future": torch.randn(batch_size, 2, 16, generator=g),
            "observation.world_future_mask": torch.tensor([[True, False]] + [[True, True]] * (batch_size - 1)),
        }
    return batch


def _noise(batch_size=3, seed=1):
    return torch.randn(
        batch_size, TINY["chunk_size"], TINY["max_action_dim"], generator=torch.Generator().manual_seed(seed)
    )


# --- (a) do-no-harm ----------------------------------------------------------------------------


def test_gate_zero_acts_exactly_like_lerobot_smolvla(vlm_folder, spec):
    plain = _plain_smolvla(vlm_folder)
    world = _world_policy(vlm_folder, spec)
    missing, unexpected = world.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("model.world.") or k == "train_step" for k in missing)
    assert world.model.world.cross_attn.gate.item() == 0.0
    batch = _batch(vlm_folder)

    reference = plain.predict_action_chunk(dict(batch), noise=_noise())
    for mode in ("pred", "zero", "random", "shuffle", "oracle"):
        assert torch.equal(world.predict_action_chunk(dict(batch), memory_mode=mode, noise=_noise()), reference), mode
    # The training loss's action term is SmolVLA's loss, also with the world module in the graph.
    time = torch.full((3,), 0.4)
    plain_loss, _ = plain.forward(dict(batch), noise=_noise(), time=time)
    world_loss, logs = world.forward(dict(batch), noise=_noise(), time=time)
    assert logs["action_loss"] == plain_loss.item() and "world_loss" in logs and world_loss.item() > plain_loss.item()

    with torch.no_grad():
        world.model.world.prophet.out_head.bias.fill_(float("nan"))
    chunk = world.predict_action_chunk(dict(batch), noise=_noise())
    assert torch.isfinite(chunk).all() and torch.equal(chunk, reference)


def test_small_backbone_trains_and_acts_at_metaworld_size(tmp_path, spec):
    """The `small` SmolVLM2 folder (random weights; what trains from scratch here): a smolvla_world on it has
    20-60M parameters; at MetaWorld's 128 px frames on SmolVLA's default 512 px canvas each frame is 64 image
    tokens; with nothing frozen it takes a training step (every part gets gradients) and acts on CPU."""
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    folder = write_smolvlm_folder(tmp_path / "small", "small")
    small = {**TINY, "resize_imgs_with_padding": (512, 512)}  # SmolVLA's default canvas
    policy = _world_policy(folder, spec, image_size=128, freeze_vision_encoder=False, train_expert_only=False, **small)
    assert 20e6 < sum(p.numel() for p in policy.parameters()) < 60e6
    batch = _batch(folder, batch_size=2, image_size=128)
    images, _ = policy.prepare_images(batch)
    assert images[0].shape[-2:] == (512, 512) and policy.model.vlm_with_expert.embed_image(images[0]).shape[1] == 64

    loss, logs = policy.train().forward(dict(batch))
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(logs["world_loss"])
    vlm = policy.model.vlm_with_expert
    for part in (vlm.get_vlm_model().vision_model, vlm.get_vlm_model().text_model, vlm.lm_expert, policy.model.world):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    policy.eval().reset()
    action = policy.select_action({k: v[:1] for k, v in batch.items() if not k.startswith("action")})
    assert action.shape == (1, 4) and torch.isfinite(action).all()


def test_without_world_module_it_is_lerobots_smolvla(vlm_folder, tmp_path):
    """E0 (`use_world_module=False`) is LeRobot's SmolVLA: from the same config and seed the same parameters
    (names, shapes, values, trainability) and state dict; a LeRobot SmolVLA's saved weights load into it strictly;
    and on the same batch the same loss and gradients, the same chunks and the same `select_action` actions, bit
    for bit, with noise given or drawn from the same seed."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy

    torch.manual_seed(0)
    plain = _plain_smolvla(vlm_folder)
    e0 = _world_policy(vlm_folder, None, seed=0, use_world_module=False)
    assert e0.world_module is None and e0.config.observation_delta_indices == plain.config.observation_delta_indices
    ours, theirs = e0.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert [(n, p.requires_grad) for n, p in e0.named_parameters()] == [
        (n, p.requires_grad) for n, p in plain.named_parameters()
    ]

    # Weights of another seed, saved by LeRobot, then loaded by our policy (strict: nothing missing or extra).
    torch.manual_seed(1)
    SmolVLAPolicy(plain.config).save_pretrained(tmp_path / "lerobot_smolvla")
    plain = SmolVLAPolicy.from_pretrained(tmp_path / "lerobot_smolvla", config=plain.config).eval()
    e0 = SmolVLAWorldPolicy.from_pretrained(tmp_path / "lerobot_smolvla", config=e0.config).eval()
    assert all(torch.equal(e0.state_dict()[name], value) for name, value in plain.state_dict().items())

    batch = _batch(vlm_folder, with_latents=False)
    losses = []
    for policy in (plain, e0):
        policy.train()
        torch.manual_seed(2)  # flow noise and time drawn inside, as in lerobot-train
        loss, _ = policy.forward(dict(batch))
        loss.backward()
        losses.append(loss.detach())
        policy.eval()
    assert torch.equal(*losses)
    assert torch.equal(
        e0.forward(dict(batch), noise=_noise(), time=torch.full((3,), 0.4))[0],
        plain.forward(dict(batch), noise=_noise(), time=torch.full((3,), 0.4))[0],
    )
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads and all(torch.equal(p.grad, grads[n]) for n, p in e0.named_parameters() if p.grad is not None)
    assert {n for n, p in e0.named_parameters() if p.grad is not None} == set(grads)

    assert torch.equal(
        e0.predict_action_chunk(dict(batch), noise=_noise()), plain.predict_action_chunk(dict(batch), noise=_noise())
    )
    observation = {k: v for k, v in batch.items() if not k.startswith("action")}
    actions = {}
    for name, policy in (("lerobot", plain), ("e0", e0)):
        policy.reset()
        torch.manual_seed(3)  # each chunk's noise drawn from the global RNG, as in lerobot-eval
        actions[name] = torch.stack(
            [policy.select_action(dict(observation)) for _ in range(TINY["n_action_steps"] + 2)]
        )
    assert torch.equal(actions["e0"], actions["lerobot"])


# --- (b) memory modes --------------------------------------------------------------------------


def test_rollout_memory_mode_changes_actions_once_gate_opens(vlm_folder, spec):
    policy = _world_policy(vlm_folder, spec)
    batch = _batch(vlm_folder)

    def chunk(**kwargs):
        return policy.predict_action_chunk(dict(batch), noise=_noise(), **kwargs)

    assert torch.equal(chunk(memory_mode="zero"), chunk(memory_mode="pred"))
    with torch.no_grad():
        policy.model.world.cross_attn.gate.fill_(1.0)
    pred, zero = chunk(memory_mode="pred"), chunk(memory_mode="zero")
    assert not torch.allclose(pred, zero, atol=1e-4)
    assert torch.equal(chunk(), pred)  # the default is world_memory_mode_rollout = pred
    policy.config.world_memory_mode_rollout = "zero"
    assert torch.equal(chunk(), zero)
    assert not torch.allclose(chunk(memory_mode="oracle"), pred, atol=1e-4)

    # Training reads the same modes: E1 (world_memory_mode_train=zero) trains on zero memory.
    def action_loss(**kwargs):
        return policy.forward(dict(batch), noise=_noise(), time=torch.full((3,), 0.4), **kwargs)[1]["action_loss"]

    assert action_loss(memory_mode="pred") != action_loss(memory_mode="zero")
    assert action_loss() == action_loss(memory_mode="pred")  # world_memory_mode_train defaults to pred
    e1 = _world_policy(vlm_folder, spec, world_memory_mode_train="zero", world_memory_mode_rollout="zero")
    e1.load_state_dict(policy.state_dict())
    assert e1.forward(dict(batch), noise=_noise(), time=torch.full((3,), 0.4))[1]["action_loss"] == action_loss(
        memory_mode="zero"
    )
    assert torch.equal(e1.predict_action_chunk(dict(batch), noise=_noise()), zero)


def test_rollout_generators_make_flow_noise_and_random_memory_the_episodes_own(vlm_folder, spec):
    """Rollouts pass one generator per episode: the chunk (flow noise and `random` memory) follows each
    episode's generator, not the global RNG, and one episode's seed leaves the others' actions alone."""
    from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS

    policy = _world_policy(vlm_folder, spec)
    with torch.no_grad():
        policy.model.world.cross_attn.gate.fill_(1.0)

    def chunk(seeds, global_seed):
        torch.manual_seed(global_seed)
        batch = _batch(vlm_folder) | {ROLLOUT_GENERATORS: [torch.Generator().manual_seed(s) for s in seeds]}
        return policy.predict_action_chunk(batch, memory_mode="random")

    first, again, other = chunk([1, 2, 3], 0), chunk([1, 2, 3], 1), chunk([1, 2, 4], 2)
    assert torch.equal(first, again)
    torch.testing.assert_close(other[:2], first[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(other[2], first[2], atol=1e-3)


def test_inference_reads_one_memory_per_chunk_at_every_denoising_step(vlm_folder, spec, monkeypatch):
    """One Prophet pass and one projected memory per chunk, read at each of the `num_steps` denoising
    steps; what is read equals what the shared WorldModule itself injects in eval mode."""
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import _ChunkMemory

    policy = _world_policy(vlm_folder, spec)
    world = policy.model.world
    with torch.no_grad():
        world.cross_attn.gate.fill_(0.5)
    calls = {"prophet": 0, "prepare": 0, "read": []}
    world.prophet.register_forward_hook(lambda *_: calls.__setitem__("prophet", calls["prophet"] + 1))
    prepare, read = world.cross_attn.prepare, world.cross_attn.read

    def counting_prepare(memory, mask=None):
        calls["prepare"] += 1
        return prepare(memory, mask)

    def recording_read(h, memory):
        calls["read"].append(memory)
        return read(h, memory)

    monkeypatch.setattr(world.cross_attn, "prepare", counting_prepare)
    monkeypatch.setattr(world.cross_attn, "read", recording_read)
    policy.predict_action_chunk(_batch(vlm_folder), memory_mode="random", noise=_noise())
    assert calls["prophet"] == 1 and calls["prepare"] == 1 and len(calls["read"]) == TINY["num_steps"]
    assert all(memory is calls["read"][0] for memory in calls["read"])

    batch = _batch(vlm_folder)
    z_hist, mask = policy.history_latents(batch, policy._world_dtype)
    h = torch.randn(3, TINY["chunk_size"], policy.model.vlm_with_expert.expert_hidden_size)
    expected, _ = world(h, z_hist, mode="pred", history_mask=mask)
    torch.testing.assert_close(_ChunkMemory(world, z_hist, mask, None, "pred")(h), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, h)


@pytest.mark.slow  # inductor compiles the denoising step on the CPU (~1 min)
def test_compiled_denoise_step_gives_the_same_chunks_without_recompiling(vlm_folder, spec):
    """`compile_denoise_step`: the same action chunks as the eager policy, and later chunks (new memory
    readers, other memory modes' memories) reuse the compiled step instead of compiling again."""
    from torch._dynamo.utils import counters

    eager = _world_policy(vlm_folder, spec)
    compiled = _world_policy(vlm_folder, spec, compile_denoise_step=True)
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for policy in (eager, compiled):
            policy.model.world.cross_attn.gate.fill_(0.5)
    counters.clear()
    for chunk, mode in enumerate(("pred", "pred", "zero", "pred")):
        batch = _batch(vlm_folder, seed=chunk)
        expected = eager.predict_action_chunk(dict(batch), memory_mode=mode, noise=_noise(seed=chunk))
        got = compiled.predict_action_chunk(dict(batch), memory_mode=mode, noise=_noise(seed=chunk))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        if chunk == 0:
            graphs_after_first_chunk = counters["stats"]["unique_graphs"]
    assert graphs_after_first_chunk > 0
    assert counters["stats"]["unique_graphs"] == graphs_after_first_chunk


# --- world latents under plain lerobot-train ------------------------------------------------------


def _rollout(policy, preprocessor, tasks: list[list[str]]) -> torch.Tensor:
    """`select_action` on raw observations (one batch of instructions per step) through ``preprocessor``."""
    g = torch.Generator().manual_seed(0)
    policy.reset()
    torch.manual_seed(3)  # each chunk's noise from the global RNG, as in lerobot-eval
    actions = []
    for step in tasks:
        observation = {
            "observation.state": torch.randn(len(step), 4, generator=g),
            ENV_STATE: torch.randn(len(step), 39, generator=g),
            CAMERA: torch.rand(len(step), 3, 64, 64, generator=g),
            "task": list(step),
        }
        actions.append(policy.select_action(preprocessor(observation)))
    return torch.stack(actions)


def test_rollout_tokenises_each_instruction_once_with_the_same_actions(vlm_folder, tmp_path):
    """The plugin's preprocessor (also as a checkpoint loads it) is LeRobot's SmolVLA pipeline with a tokenizer
    step of the same settings that tokenises each distinct instruction (batch) once: the same actions, bit for bit."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
    from lerobot.processor import TokenizerProcessorStep

    from lerobot_policy_world_modality.common import InstructionTokenizerStep

    policy = _world_policy(vlm_folder, None, use_world_module=False, n_action_steps=2)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=None)
    preprocessor.save_pretrained(tmp_path / "ckpt")
    postprocessor.save_pretrained(tmp_path / "ckpt")
    loaded, _ = make_pre_post_processors(policy.config, pretrained_path=str(tmp_path / "ckpt"))
    lerobots, _ = make_smolvla_pre_post_processors(policy.config, None)
    lerobot_step = next(s for s in lerobots.steps if isinstance(s, TokenizerProcessorStep))
    # Episodes: a repeated instruction; a new one, then the first again; a batch mixing them, whose instructions
    # change order at its fourth step.
    episodes = [
        [["reach the goal"]] * 5,
        [["open the drawer"]] * 3 + [["reach the goal"]] * 2,
        [["reach the goal", "open the drawer"]] * 3 + [["open the drawer", "reach the goal"]] * 2,
    ]
    for pipeline in (preprocessor, loaded):
        step = next(s for s in pipeline.steps if isinstance(s, TokenizerProcessorStep))
        assert isinstance(step, InstructionTokenizerStep) and step.get_config() == lerobot_step.get_config()
        counting = step.input_tokenizer.tokenizer = CountingTokenizer(step.input_tokenizer.tokenizer)
        for tasks in episodes:
            assert torch.equal(_rollout(policy, pipeline, tasks), _rollout(policy, lerobots, tasks))
        assert counting.texts == [  # after LeRobot's newline step
            ["reach the goal\n"],
            ["open the drawer\n"],
            ["reach the goal\n", "open the drawer\n"],
            ["open the drawer\n", "reach the goal\n"],
        ]


def test_online_latents_from_delta_frames_equal_the_cache(metaworld_dataset, latent_cache, vlm_folder, spec):
    """Without a cache, the frames at `observation_delta_indices` give the cache's history and futures."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.datasets.factory import resolve_delta_timestamps

    from lerobot_policy_world_modality.latent_cache import LatentCache

    policy = _world_policy(vlm_folder, spec)
    assert policy.config.observation_delta_indices == [-1, 0, 1, 2]
    meta = LeRobotDataset(repo_id="local/tiny", root=metaworld_dataset).meta
    dataset = LeRobotDataset(
        repo_id="local/tiny", root=metaworld_dataset, delta_timestamps=resolve_delta_timestamps(policy.config, meta)
    )
    indices = torch.tensor([0, 1, 24, 48, 49, 50])  # episode starts, middles and ends
    samples = [dataset[int(i)] for i in indices]
    batch = {key: torch.stack([s[key] for s in samples]) for key in (CAMERA, f"{CAMERA}_is_pad", "observation.state")}
    batch["observation.state_is_pad"] = torch.stack([s["observation.state_is_pad"] for s in samples])
    online = policy._encode_frames(batch)
    cached = LatentCache.load(latent_cache).windows(indices, 2, 2)
    assert torch.equal(online["observation.world_latents_mask"], cached.history_mask)
    assert torch.equal(online["observation.world_future_mask"], cached.future_mask)
    assert not cached.history_mask.all() and not cached.future_mask.all()
    real = cached.history_mask[..., None]
    torch.testing.assert_close(online["observation.world_latents"] * real, cached.z_history * real, atol=2e-3, rtol=0)
    real = cached.future_mask[..., None]
    torch.testing.assert_close(online["observation.world_future"] * real, cached.z_future * real, atol=2e-3, rtol=0)
    # SmolVLA gets the observation at offset 0 only.
    current = policy._current_step(batch)
    assert torch.equal(current[CAMERA], batch[CAMERA][:, 1])
    assert current["observation.state"].shape == (len(indices), 4)


# --- (c) checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_in_a_fresh_process(vlm_folder, spec, tmp_path):
    policy = _world_policy(vlm_folder, spec)
    with torch.no_grad():
        policy.model.world.cross_attn.gate.fill_(0.7)  # so the world weights matter
    batch = _batch(vlm_folder)
    expected = policy.predict_action_chunk(dict(batch), noise=_noise())
    policy.save_pretrained(tmp_path / "ckpt")
    torch.save({"batch": batch, "noise": _noise()}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy
        policy = SmolVLAWorldPolicy.from_pretrained({str(tmp_path / "ckpt")!r})
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save(policy.predict_action_chunk(inputs["batch"], noise=inputs["noise"]), {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=SUBPROCESS_ENV, cwd=REPO, timeout=300)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_rollout_temporal_window_mismatch_is_an_error(vlm_folder, spec, tmp_path):
    from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy

    with pytest.raises(ValueError, match="world_rollout_temporal_window 4 != the encoder spec's temporal_window 1"):
        SmolVLAWorldConfig(encoder_spec=spec, world_rollout_temporal_window=4)
    policy = _world_policy(vlm_folder, spec)
    assert policy.config.world_rollout_temporal_window == 1
    policy.save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "world_rollout_temporal_window": 2}))
    with pytest.raises(ValueError, match="world_rollout_temporal_window 2 != the encoder spec's temporal_window 1"):
        SmolVLAWorldPolicy.from_pretrained(tmp_path / "ckpt")


def test_a_vlm_folder_missing_or_of_another_family_is_refused_before_the_model_is_built(spec, tmp_path):
    """SmolVLA-world (E0 included) names what is wrong with vlm_model_name, instead of the traceback LeRobot's
    model would raise while building a VLM from another family's config or looking for it on the hub."""
    from lerobot_policy_world_modality.errors import InputError, MissingFileError
    from world_modality.model_folders import write_random_backbone

    qwen = write_random_backbone("qwen3_vl", "tiny", tmp_path / "qwen")
    for use_world_module in (True, False):
        with pytest.raises(
            InputError, match=r"vlm_model_name: .*qwen holds a 'qwen3_vl' model, not a backbone of the "
        ):
            _world_policy(qwen, spec, use_world_module=use_world_module)
    with pytest.raises(MissingFileError, match=r"vlm_model_name: .*missing is not a Hugging Face model folder"):
        _world_policy(tmp_path / "missing", spec)


# --- (d, e) LeRobot's own command lines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lerobot_train_run(metaworld_dataset, latent_cache, vlm_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot-train") / "run"
    lerobot_train(
        metaworld_dataset,
        out,
        "--policy.type=smolvla_world",
        f"--policy.vlm_model_name={vlm_folder}",
        f"--policy.encoder_spec_path={latent_cache}",
        *TRAIN_CLI,
        "--steps=2",
        "--batch_size=2",
        "--save_freq=2",
        "--log_freq=1",
    )
    return out


@pytest.mark.slow
def test_lerobot_train_writes_a_world_checkpoint(lerobot_train_run, spec):
    from safetensors import safe_open

    model_dir = lerobot_train_run / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["type"] == "smolvla_world" and config["encoder_spec"] == spec and config["latent_dim"] == 16
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        assert int(weights.get_tensor("train_step")) == 2
    assert "model.world.cross_attn.gate" in keys and any(k.startswith("model.world.prophet.") for k in keys)
    assert (model_dir / "policy_preprocessor.json").is_file()


@pytest.mark.slow
def test_lerobot_eval_runs_the_checkpoint_in_lerobots_metaworld_env(lerobot_train_run, tmp_path):
    """LeRobot's MetaworldEnv names the camera `observation.image`; `--rename_map` maps it to the
    dataset key the checkpoint was trained on. Its episodes are fixed at 500 steps, so this test
    shortens them to 6 (the only change to LeRobot's eval)."""
    model_dir = lerobot_train_run / "checkpoints" / "last" / "pretrained_model"
    info = lerobot_eval_metaworld(model_dir, tmp_path / "eval", CAMERA)
    assert info["overall"]["n_episodes"] == 1 and "pc_success" in info["overall"]


@pytest.mark.slow
def test_wm_train_and_wm_eval_run_smolvla_world(metaworld_dataset, latent_cache, vlm_folder, tmp_path):
    """`wm train --policy smolvla_world` (cached latents + decoded camera frames) and a short closed-loop
    `wm eval` in two pipelined env groups (forked policy state: LeRobot's action queues), both through the
    command line."""
    from world_modality.atomic_io import read_jsonl

    wm = str(REPO / ".venv" / "bin" / "wm")
    policy = {**TINY, **TINY_WORLD, "vlm_model_name": str(vlm_folder), "resize_imgs_with_padding": [64, 64]}
    subprocess.run(
        [
            wm,
            "train",
            str(metaworld_dataset),
            "--latents",
            str(latent_cache),
            "--policy",
            "smolvla_world",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--save-every",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
            *(f"--set={k}={json.dumps(v)}" for k, v in policy.items()),
        ],
        check=True,
        env=SUBPROCESS_ENV,
        cwd=REPO,
        timeout=600,
        capture_output=True,
    )
    subprocess.run(
        [
            wm,
            "eval",
            str(tmp_path / "run"),
            "--tasks",
            "reach-v3",
            "--episodes-per-task",
            "2",
            "--max-steps",
            "4",
            "--workers",
            "2",
            "--groups",
            "2",
            "--device",
            "cpu",
            "--arm",
            "E2",
            "--out",
            str(tmp_path / "eval"),
        ],
        check=True,
        env=SUBPROCESS_ENV,
        cwd=REPO,
        timeout=600,
        capture_output=True,
    )
    episodes = read_jsonl(next((tmp_path / "eval").rglob("*.jsonl")))  # two pipelined groups, one episode each
    assert len(episodes) == 2 and {e["arm"] for e in episodes} == {"E2"} and {e["steps"] for e in episodes} == {4}
