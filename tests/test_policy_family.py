"""The world-transformer policy family (A, B, B_cont, C, F): training, do-no-harm, checkpoints, resume.

Everything runs on the session's tiny MetaWorld dataset with `state`-encoder latents and tiny models.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import SUBPROCESS_ENV
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world_tokens import WorldTokens
from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy
from world_modality.data.check import DatasetKeys
from world_modality.latents import compute_latents
from world_modality.training.checkpoint import STATE_FILE, TRAINING_STATE, check_inputs, load_checkpoint
from world_modality.training.data import LatentBatches, read_frame_table, split_episodes
from world_modality.training.trainer import TrainOptions, train, validation_loss

TINY = {
    "chunk_size": 4,
    "n_action_steps": 2,
    "history_len": 3,
    "num_future": 2,
    "d_model": 32,
    "n_heads": 2,
    "n_layers": 1,
    "dim_feedforward": 64,
    "prophet_dim": 32,
    "prophet_heads": 2,
    "prophet_layers": 1,
    "cross_attn_heads": 2,
    "scheduler_warmup_steps": 10,
    "optimizer_lr": 2e-3,
}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def latents(state_latents) -> Path:
    """The session's `state` latents, under this module's name."""
    return state_latents


@pytest.fixture(scope="module")
def tokens(latents) -> Path:
    from world_modality.tokens import fit_tokens

    return fit_tokens(LatentCache.load(latents), codebook_size=8, seed=0)


def _train(dataset, latents, out, model_type="F", steps=300, **kwargs) -> Path:
    policy = {**TINY, **kwargs.pop("policy", {})}
    return train(
        TrainOptions(
            dataset=str(dataset),
            latents=str(latents),
            out=str(out),
            model_type=model_type,
            steps=steps,
            batch_size=16,
            save_every=kwargs.pop("save_every", steps),
            policy=policy,
            device="cpu",
            progress=False,
            **kwargs,
        )
    )


def _train_split_loss(policy, preprocessor, dataset, latents) -> float:
    keys = DatasetKeys()
    table = read_frame_table(dataset, keys)
    data = LatentBatches(
        LatentCache.load(latents),
        table,
        keys,
        split_episodes(table, 0.1)[0],
        policy.config.chunk_size,
        policy.config.history_len,
        policy.config.num_future,
    )
    return validation_loss(policy, preprocessor, data, 256)["action_loss"]


def _fresh_policy(checkpoint):
    """The policy as it was at step 0 of the run (same seed, same config)."""
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    torch.manual_seed(checkpoint.meta["seed"])
    policy = WorldTransformerPolicy(dataclasses.replace(checkpoint.policy.config))
    if policy.config.uses_tokens:
        policy.centroids.copy_(checkpoint.policy.centroids)
    return policy.eval()


@pytest.mark.parametrize(
    "model_type",
    [
        "A",
        "F",
        pytest.param("B", marks=pytest.mark.slow),
        pytest.param("B_cont", marks=pytest.mark.slow),
        pytest.param("C", marks=pytest.mark.slow),
    ],
)
def test_model_trains_and_loss_falls(model_type, metaworld_dataset, latents, tokens, tmp_path):
    checkpoint = load_checkpoint(
        _train(
            metaworld_dataset,
            latents,
            tmp_path / "run",
            model_type,
            tokens=str(tokens) if model_type in ("B", "C") else None,
        )
    )
    before = _train_split_loss(_fresh_policy(checkpoint), checkpoint.preprocessor, metaworld_dataset, latents)
    after = _train_split_loss(checkpoint.policy, checkpoint.preprocessor, metaworld_dataset, latents)
    assert after < 0.6 * before, (before, after)
    assert (tmp_path / "run" / "tensorboard").is_dir()
    if model_type == "F":
        assert _fresh_policy(checkpoint).world.cross_attn.gate.item() == 0.0
        assert checkpoint.policy.world.cross_attn.gate.item() != 0.0
        assert int(checkpoint.policy.train_step) == 300


def test_tensorboard_logs_world_module_values(metaworld_dataset, latents, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(metaworld_dataset, latents, tmp_path / "run", "F", steps=5, policy={"num_future": 2})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/world_gate_raw",
        "train/world_gate",
        "train/world_attn_mass_k1",
        "train/world_attn_mass_k2",
        "train/world_loss_k1",
        "train/world_loss_k2",
        "train/world_oracle_fraction",
        "train/action_loss",
        "train/time_data_s",
        "val/action_loss",
    }
    assert expected <= tags, expected - tags
    assert len(events.Scalars("train/world_gate")) == 5


def _rollout_batch(dataset, frame: int):
    """What a simulator gives the policy at one frame: raw state, environment state and instruction."""
    table = read_frame_table(dataset, DatasetKeys())
    from world_modality.data.readers import EpisodeReader

    reader = EpisodeReader(dataset, "observation.environment_state")
    env_state = torch.tensor(reader.read(reader.episodes.iloc[:1])[0][frame])
    return {
        "observation.state": table.state[frame],
        "observation.environment_state": env_state,
        "task": table.instruction[frame],
    }


def test_do_no_harm_at_init(metaworld_dataset, latents, tmp_path):
    checkpoint = load_checkpoint(_train(metaworld_dataset, latents, tmp_path / "run", "F", steps=1))
    policy = _fresh_policy(checkpoint)
    keys = DatasetKeys()
    table = read_frame_table(metaworld_dataset, keys)
    data = LatentBatches(LatentCache.load(latents), table, keys, [0, 1], 4, 3, 2)
    batch = checkpoint.preprocessor(data.batch(torch.arange(0, 40, 3)))
    none = policy.predict_action_chunk(batch, memory_mode="none")
    for mode in ("pred", "zero", "random", "shuffle", "oracle"):
        assert torch.equal(policy.predict_action_chunk(batch, memory_mode=mode), none), mode
    with torch.no_grad():
        policy.world.prophet.out_head.bias.fill_(float("nan"))
    chunk = policy.predict_action_chunk(batch, memory_mode="pred")
    assert torch.isfinite(chunk).all() and torch.equal(chunk, none)


@pytest.fixture(scope="module")
def f_checkpoint(metaworld_dataset, latents, tmp_path_factory) -> Path:
    return _train(
        metaworld_dataset,
        latents,
        tmp_path_factory.mktemp("f") / "run",
        "F",
        steps=40,
        policy={"action_head": "flow", "flow_steps": 3},
    )


def test_checkpoint_round_trip_in_fresh_process(metaworld_dataset, latents, f_checkpoint, tmp_path):
    """Fast path (cached latents) here, rollout path (online encoding of the raw observation) in a fresh
    process: the first action of the first episode is the same."""
    checkpoint = load_checkpoint(f_checkpoint)
    keys = DatasetKeys()
    data = LatentBatches(LatentCache.load(latents), read_frame_table(metaworld_dataset, keys), keys, [0], 4, 3, 2)
    torch.manual_seed(123)
    chunk = checkpoint.policy.predict_action_chunk(checkpoint.preprocessor(data.batch(torch.tensor([0]))))
    expected = checkpoint.postprocessor(chunk[:, 0])
    torch.save(_rollout_batch(metaworld_dataset, 0), tmp_path / "obs.pt")
    script = textwrap.dedent(f"""
        import torch
        from world_modality.training.checkpoint import load_checkpoint
        ckpt = load_checkpoint({str(f_checkpoint)!r})
        obs = torch.load({str(tmp_path / "obs.pt")!r})
        ckpt.policy.reset()
        torch.manual_seed(123)
        action = ckpt.postprocessor(ckpt.policy.select_action(ckpt.preprocessor(obs)))
        torch.save(action, {str(tmp_path / "action.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=SUBPROCESS_ENV, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "action.pt"), expected, rtol=0, atol=1e-6)


def test_checkpoint_refuses_other_encoder_spec_or_keys(metaworld_dataset, latents, f_checkpoint, tmp_path):
    from lerobot_policy_world_modality.encoders import fit_state_encoder

    checkpoint = load_checkpoint(f_checkpoint)
    other_encoder = fit_state_encoder(torch.randn(50, 39), tmp_path / "other-state")
    other = compute_latents(
        metaworld_dataset,
        "state",
        encoder_path=other_encoder,
        out=tmp_path / "other-latents",
        progress=False,
        device="cpu",
    )
    ours, theirs = checkpoint.policy.encoder_spec.config_hash, LatentCache.load(other).spec.config_hash
    with pytest.raises(ValueError, match=f"config_hash: expected '{ours}', got '{theirs}'"):
        check_inputs(checkpoint.policy.config, LatentCache.load(other).spec, DatasetKeys(), "test")
    with pytest.raises(
        ValueError, match="state key: checkpoint 'observation.state', given 'observation.environment_state'"
    ):
        check_inputs(
            checkpoint.policy.config,
            LatentCache.load(latents).spec,
            DatasetKeys(state="observation.environment_state"),
            "test",
        )
    from world_modality.training.intervene import intervene

    with pytest.raises(ValueError, match="encoder spec mismatch"):
        intervene(f_checkpoint, metaworld_dataset, other, ["zero"])


def test_intervene_reports_ratios(metaworld_dataset, latents, f_checkpoint):
    from world_modality.training.intervene import format_table, intervene

    result = intervene(f_checkpoint, metaworld_dataset, latents, ["zero", "random", "shuffle", "signflip", "oracle"])
    assert set(result["ratio_to_pred"]) == {"zero", "random", "shuffle", "signflip", "oracle"}
    assert all(r > 0 and r == r for r in result["ratio_to_pred"].values())
    assert result["val_episodes"] and "ratio to pred" in format_table(result)
    assert json.loads(json.dumps(result)) == result


def test_resume_continues_to_the_same_step(metaworld_dataset, latents, tmp_path):
    run = tmp_path / "run"
    _train(metaworld_dataset, latents, run, "F", steps=10, save_every=5)
    with pytest.raises(FileExistsError, match="--resume"):
        _train(metaworld_dataset, latents, run, "F", steps=20)
    last = _train(metaworld_dataset, latents, run, "F", steps=20, save_every=5, resume=True)
    checkpoint = load_checkpoint(last)
    assert last.name == "000020" and checkpoint.meta["training_step"] == 20 and int(checkpoint.policy.train_step) == 20


@pytest.mark.slow
def test_killed_wm_train_resumes_to_the_same_step(metaworld_dataset, latents, tmp_path):
    run = tmp_path / "run"
    tiny = [f"--set={k}={v}" for k, v in TINY.items()]
    command = [
        sys.executable,
        "-m",
        "world_modality.cli",
        "train",
        str(metaworld_dataset),
        "--latents",
        str(latents),
        "--model-type",
        "F",
        "--steps",
        "400",
        "--save-every",
        "20",
        "--batch-size",
        "16",
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        *tiny,
    ]
    process = subprocess.Popen(command, env=SUBPROCESS_ENV)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last").exists():
            assert process.poll() is None and time.monotonic() < deadline, "wm train ended before its first checkpoint"
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0  # killed mid-run
    subprocess.run([*command, "--resume"], check=True, env=SUBPROCESS_ENV, timeout=400)
    checkpoint = load_checkpoint(run)
    assert checkpoint.meta["training_step"] == 400 and int(checkpoint.policy.train_step) == 400


def test_lerobot_factory_builds_the_policy_by_type_name(latents):
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import features_for

    inputs, outputs = features_for("observation.state", 4, "action", 4, "observation.environment_state", (39,), False)
    spec = LatentCache.load(latents).spec
    config = make_policy_config(
        "world_transformer",
        model_type="A",
        encoder_spec=spec.to_dict(),
        latent_dim=spec.output_dim,
        instructions=["reach"],
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        **TINY,
    )
    policy = get_policy_class("world_transformer")(config)
    assert type(policy).__name__ == "WorldTransformerPolicy"
    stats = {
        "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
        "action": {"mean": torch.zeros(4), "std": torch.ones(4)},
    }
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=stats)
    obs = {"observation.state": torch.zeros(4), "observation.environment_state": torch.zeros(39), "task": "reach"}
    policy.eval()
    assert policy.select_action(preprocessor(obs)).shape == (1, 4)


def _tiny_cli(model_type: str) -> list[str]:
    return [
        "--policy.type=world_transformer",
        f"--policy.model_type={model_type}",
        *(f"--policy.{k}={v}" for k, v in TINY.items()),
    ]


@pytest.mark.slow
def test_lerobot_train_reads_the_latent_cache_for_every_model_type(metaworld_dataset, latents, tokens, tmp_path):
    """Under lerobot-train the policy completes its config from `latents_path` (encoder spec, dims,
    instructions) and reads each batch's history and future latents from the cache by frame index:
    model B, which needs future latents and the codebook, trains and checkpoints."""
    from lerobot_cli import lerobot_train

    model_dir = lerobot_train(
        metaworld_dataset,
        tmp_path / "run",
        *_tiny_cli("B"),
        f"--policy.latents_path={latents}",
        f"--policy.tokens_path={tokens}",
        "--steps=3",
        "--batch_size=4",
        "--save_freq=3",
        "--log_freq=1",
    )
    config = json.loads((model_dir / "config.json").read_text())
    assert config["encoder_spec"] == LatentCache.load(latents).spec.to_dict()
    assert config["instructions"] == sorted(set(read_frame_table(metaworld_dataset, DatasetKeys()).instruction))
    policy = WorldTransformerPolicy.from_pretrained(model_dir)
    assert int(policy.train_step) == 3
    assert torch.equal(policy.centroids, WorldTokens.load(tokens).centroids.float())


@pytest.mark.slow
def test_lerobot_eval_runs_a_world_transformer_checkpoint(metaworld_dataset, tmp_path):
    """A model F checkpoint on learned image latents acts in LeRobot's own MetaworldEnv (its camera
    renamed to the dataset's key), encoding frames online with the checkpoint's encoder spec."""
    from lerobot_cli import lerobot_eval_metaworld

    image_latents = compute_latents(
        metaworld_dataset,
        "learned",
        learned_steps=5,
        batch_size=32,
        device="cpu",
        out=tmp_path / "latents",
        progress=False,
    )
    checkpoint = _train(metaworld_dataset, image_latents, tmp_path / "run", steps=4)
    info = lerobot_eval_metaworld(checkpoint / "pretrained_model", tmp_path / "eval", "observation.images.corner2")
    assert info["overall"]["n_episodes"] == 1 and "pc_success" in info["overall"]


def _tiny_text_encoder(folder: Path, texts: list[str]) -> Path:
    """A BERT-style text encoder folder built in code: word-level vocabulary of ``texts``, random weights."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for t in texts for w in t.lower().replace(".", " ").split()} | {"unseen", "words"})
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(folder)
    return folder


def test_frozen_text_encoder_conditions_the_policy_and_stays_out_of_the_checkpoint(
    metaworld_dataset, latents, tmp_path
):
    from safetensors import safe_open

    instructions = sorted(set(read_frame_table(metaworld_dataset, DatasetKeys()).instruction))
    encoder = _tiny_text_encoder(tmp_path / "text", instructions)
    checkpoint = _train(
        metaworld_dataset,
        latents,
        tmp_path / "run",
        model_type="A",
        steps=20,
        policy={"text_encoder_path": str(encoder)},
    )
    with safe_open(checkpoint / "pretrained_model" / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any(k.startswith("instruction.proj.") for k in keys)
    assert not any("embedding" in k and k.startswith("instruction.") for k in keys)  # no vocabulary table
    assert not any("text_model" in k or "encoder.layer" in k for k in keys)  # the frozen encoder is not saved
    policy = load_checkpoint(checkpoint).policy
    texts = [instructions[0], instructions[1], "unseen words"]  # free text: no vocabulary to fall outside of
    embedded = policy.instruction(texts, torch.device("cpu"))
    assert embedded.shape == (3, TINY["d_model"]) and not torch.allclose(embedded[0], embedded[1])
    assert all(not p.requires_grad for p in policy.instruction._text_model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_gathered_on_the_gpu_equal_the_host_batches(metaworld_dataset, latents):
    """`wm train` gathers the latents-only family's batches on the GPU: the same values as on the host."""
    keys = DatasetKeys()
    table, cache = read_frame_table(metaworld_dataset, keys), LatentCache.load(latents)
    host = LatentBatches(cache, table, keys, [0, 1], 4, 3, 2)
    on_gpu = LatentBatches(cache.to("cuda"), table, keys, [0, 1], 4, 3, 2, device="cuda")
    rows = torch.arange(0, 40, 3)
    expected, batch = host.batch(rows), on_gpu.batch(rows)
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].is_cuda and torch.equal(batch[key].cpu(), value), key
        else:
            assert batch[key] == value, key


# --- world-memory training recipes through `wm train` (tests/test_world_memory_recipes.py shows them opening the gate)


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in checkpoint.policy.state_dict().items()}


def test_two_stage_training_resumes_in_its_stage(metaworld_dataset, latents, tmp_path, monkeypatch):
    """Prophet alone for 6 steps, then the policy with the Prophet frozen: a run interrupted after its
    checkpoint at step 8 and resumed ends with the weights of the uninterrupted run."""
    import world_modality.training.trainer as trainer

    recipe = {"prophet_pretrain_steps": 6, "prophet_freeze_after_pretrain": True}
    straight = load_checkpoint(
        _train(metaworld_dataset, latents, tmp_path / "straight", steps=12, save_every=4, policy=recipe)
    )
    save = trainer.save_checkpoint

    def save_then_stop(run_dir, step, *args):
        folder = save(run_dir, step, *args)
        if step == 8:
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _train(metaworld_dataset, latents, tmp_path / "run", steps=12, save_every=4, policy=recipe)
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    resumed = load_checkpoint(
        _train(metaworld_dataset, latents, tmp_path / "run", steps=12, save_every=4, policy=recipe, resume=True)
    )
    assert int(resumed.policy.train_step) == 12
    final, expected = _weights(resumed), _weights(straight)
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    # Stage 1 (step 4): only the Prophet moved. Stage 2 (steps 8 -> 12): the frozen Prophet did not.
    initial = _fresh_policy(straight).state_dict()
    step4 = _weights(load_checkpoint(tmp_path / "run" / "checkpoints" / "000004"))
    step8 = _weights(load_checkpoint(tmp_path / "run" / "checkpoints" / "000008"))
    prophet = [k for k in initial if k.startswith("world.prophet.")]
    others = [k for k in initial if not k.startswith("world.prophet.") and k != "train_step"]
    assert all(torch.equal(step4[k], initial[k]) for k in others) and step4["world.cross_attn.gate"] == 0
    assert not all(torch.equal(step4[k], initial[k]) for k in prophet)
    assert all(torch.equal(step8[k], final[k]) for k in prophet)
    assert not all(torch.equal(step8[k], final[k]) for k in others)


def test_wm_train_recipe_options(metaworld_dataset, latents, tmp_path):
    """`scheduled` without a schedule anneals over the first half of --steps; the gate trains in its own
    optimizer group at gate_lr_multiplier times the learning rate; a per-channel gate is saved per channel, and
    `wm intervene` reports its strength (the RMS of tanh over the channels)."""
    run = _train(
        metaworld_dataset,
        latents,
        tmp_path / "run",
        steps=4,
        policy={"memory_source": "scheduled", "gate_lr_multiplier": 10.0, "gate_type": "channel", "gate_init": 0.5},
    )
    checkpoint = load_checkpoint(run)
    assert (checkpoint.policy.config.memory_schedule_start, checkpoint.policy.config.memory_schedule_end) == (0, 2)
    groups = torch.load(run / TRAINING_STATE / STATE_FILE, weights_only=False)["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups][1] == 1 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    gate = checkpoint.policy.world.cross_attn.gate
    assert gate.shape == (TINY["d_model"],) and not torch.equal(gate, torch.full_like(gate, 0.5))
    from world_modality.training.intervene import intervene

    reported = intervene(run, metaworld_dataset, latents, ["zero"])["gate"]
    assert reported == pytest.approx(gate.detach().tanh().square().mean().sqrt().item())
