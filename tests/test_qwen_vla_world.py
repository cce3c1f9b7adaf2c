"""F+ (`qwen_vla_world`): Qwen-VL folders written in code, the policy on tiny Qwen3-VL and Qwen2.5-VL.

Everything is built offline: `write_qwen_vl_folder(size="tiny")` gives random-weight models with a
byte-level BPE tokenizer; world latents come from a `state` encoder fitted on random states.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import OBS_ENV_STATE

from conftest import SUBPROCESS_ENV, CountingTokenizer
from lerobot_policy_world_modality.common import CachedTokenizer
from lerobot_policy_world_modality.encoders import StateEncoder, fit_state_encoder
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import (
    BACKBONES,
    QwenVLAWorldConfig,
    canonical_backbone,
)
from lerobot_policy_world_modality.qwen_vla_world.modeling_qwen_vla_world import (
    ADAPTER_DIR,
    BACKBONE_FILE,
    QwenVLAWorldPolicy,
)
from lerobot_policy_world_modality.qwen_vla_world.prompt import build_prompt
from lerobot_policy_world_modality.world.history import (
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
)
from world_modality.model_folders.qwen_vl import ARCHITECTURES, write_qwen_vl_folder

IMAGE_KEY = "observation.images.corner2"
WRIST_KEY = "observation.images.wrist"
NAMES = {"qwen3_vl": "qwen3_vl_2b_instruct", "qwen2_5_vl": "qwen2_5_vl_3b_instruct"}
BATCH, CHUNK, STATE_DIM, ACTION_DIM, ENV_DIM, T, K = 3, 4, 4, 4, 6, 3, 2
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_vl")
    return {backbone: write_qwen_vl_folder(root / backbone, backbone, "tiny") for backbone in NAMES}


@pytest.fixture(scope="module")
def encoder_spec(tmp_path_factory):
    path = fit_state_encoder(torch.randn(64, ENV_DIM), tmp_path_factory.mktemp("state_encoder"))
    return StateEncoder.load(path).spec.to_dict()


def make_config(folders, encoder_spec, backbone="qwen3_vl", image_size=64, **overrides) -> QwenVLAWorldConfig:
    features = {
        IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)),
        WRIST_KEY: PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)),
        "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        OBS_ENV_STATE: PolicyFeature(FeatureType.ENV, (ENV_DIM,)),
    }
    settings = {
        "backbone": NAMES[backbone],
        "backbone_path": str(folders[backbone]),
        "backbone_dtype": "float32",
        "chunk_size": CHUNK,
        "n_action_steps": 2,
        "history_len": T,
        "num_future": K,
        "latent_dim": ENV_DIM,
        "encoder_spec": encoder_spec,
        "image_key": IMAGE_KEY,
        "prophet_dim": 32,
        "prophet_heads": 2,
        "prophet_layers": 1,
        "cross_attn_heads": 2,
        "head_dim": 32,
        "lora_r": 4,
        "lora_alpha": 8,
        "coc_max_tokens": 24,
        "input_features": features,
        "output_features": {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        "device": "cpu",
    }
    return QwenVLAWorldConfig(**{**settings, **overrides})


def make_policy(folders, encoder_spec, backbone="qwen3_vl", seed=0, **overrides) -> QwenVLAWorldPolicy:
    torch.manual_seed(seed)
    return QwenVLAWorldPolicy(make_config(folders, encoder_spec, backbone, **overrides))


def make_batch(seed=0, coc=None, with_latents=True, image_size=64) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {
        IMAGE_KEY: torch.rand(BATCH, 3, image_size, image_size, generator=g),
        WRIST_KEY: torch.rand(BATCH, 3, image_size, image_size, generator=g),
        "observation.state": torch.randn(BATCH, STATE_DIM, generator=g),
        OBS_ENV_STATE: torch.randn(BATCH, ENV_DIM, generator=g),
        "action": torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g),
        "action_is_pad": torch.zeros(BATCH, CHUNK, dtype=torch.bool),
        "task": ["pick up the red cube", "reach the goal", "open the drawer now"],
        "episode_index": torch.tensor([5, 6, 7]),
    }
    if with_latents:
        batch |= {
            WORLD_LATENTS: torch.randn(BATCH, T, ENV_DIM, generator=g),
            WORLD_LATENTS_MASK: torch.ones(BATCH, T, dtype=torch.bool),
            WORLD_FUTURE: torch.randn(BATCH, K, ENV_DIM, generator=g),
            WORLD_FUTURE_MASK: torch.ones(BATCH, K, dtype=torch.bool),
        }
    if coc is not None:
        batch["coc_text"] = coc
    return batch


def train_steps(policy, batch, steps, lr=3e-3) -> list[dict]:
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=lr)
    policy.train()
    history = []
    for _ in range(steps):
        loss, logs = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(logs)
    policy.eval()
    return history


# --- model folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", list(NAMES))
def test_tiny_folder_loads_offline_and_forwards(folders, backbone):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folders[backbone], local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folders[backbone], local_files_only=True)
    assert model.config.model_type == backbone
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "pick up the cube"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>pick up the cube")
    inputs = processor(images=[torch.rand(3, 64, 64)], text=[text], return_tensors="pt", do_rescale=False)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert image_tokens == inputs["image_grid_thw"].prod().item() // 4 > 0
    assert inputs["mm_token_type_ids"].sum().item() == image_tokens
    logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer)) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("backbone", "size", "billions"),
    [
        ("qwen3_vl", "2b", 2.13),
        ("qwen3_vl", "4b", 4.44),
        ("qwen3_vl", "8b", 8.77),
        ("qwen2_5_vl", "3b", 3.75),
    ],
)
def test_full_size_architectures(tmp_path, backbone, size, billions):
    """Published sizes: config only (no weights written), parameter count of the released model."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder = write_qwen_vl_folder(tmp_path, backbone, size)
    assert not list(folder.glob("*.safetensors"))
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    text, vision = config.get_text_config(), config.vision_config
    assert vision.out_hidden_size == text.hidden_size
    assert (
        sum(text.rope_parameters["mrope_section"])
        == (text.head_dim if backbone == "qwen3_vl" else text.hidden_size // text.num_attention_heads) // 2
    )
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_small_folder_trains_and_acts_at_metaworld_size(tmp_path, encoder_spec):
    """The `small` Qwen3-VL folder (random weights; what trains from scratch here): 20-60M parameters, 64 image
    tokens from a 128 px MetaWorld frame as the released processor gives them, and a qwen_vla_world on it
    takes a training step and acts on CPU."""
    from transformers import AutoConfig

    folder = write_qwen_vl_folder(tmp_path / "small", "qwen3_vl", "small")
    assert list(folder.glob("*.safetensors"))  # backbone_path=DIR is all a real Qwen3-VL folder changes
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert (
        config.get_text_config().num_hidden_layers == ARCHITECTURES[("qwen3_vl", "small")]["text"]["num_hidden_layers"]
    )
    policy = make_policy({"qwen3_vl": folder}, encoder_spec, image_size=128)
    backbone = sum(
        p.numel()
        for n, p in policy.backbone.get_base_model().named_parameters()
        if "lora_" not in n and "trainable_tokens" not in n
    )
    assert 20e6 < backbone < 60e6, backbone
    batch = make_batch(image_size=128)
    inputs = policy.processor(
        images=[batch[IMAGE_KEY][0]], text=["<|image_pad|>"], return_tensors="pt", do_rescale=False
    )
    assert inputs["image_grid_thw"].prod().item() // 4 == 64

    [logs] = train_steps(policy, batch, steps=1)
    assert math.isfinite(logs["loss"])
    lora = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # a step moved the adapters off their zero start
    policy.reset()
    rollout = {k: v for k, v in make_batch(image_size=128, with_latents=False).items() if not k.startswith("action")}
    action = policy.select_action(rollout)
    assert action.shape == (BATCH, ACTION_DIM) and torch.isfinite(action).all()


def test_unknown_sizes_and_backbone_names(tmp_path):
    with pytest.raises(ValueError, match="2b, 4b, 8b"):
        write_qwen_vl_folder(tmp_path, "qwen3_vl", "3b")
    assert canonical_backbone("Qwen3-VL-4B-Instruct") == "qwen3_vl_4b_instruct"
    assert canonical_backbone("qwen2.5-vl-3b-instruct") == "qwen2_5_vl_3b_instruct"
    for name in ("Qwen3-VL-3B", "qwen3_vl_3b_instruct", "qwen3-vl-3b"):
        with pytest.raises(ValueError, match="no 3B") as error:
            QwenVLAWorldConfig(backbone=name)
        assert all(real in str(error.value) for real in BACKBONES)


# --- policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", list(NAMES))
def test_training_lowers_the_loss(folders, encoder_spec, backbone):
    policy = make_policy(folders, encoder_spec, backbone, use_proprio=True, lambda_text=0.5)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    layers = ARCHITECTURES[(backbone, "tiny")]["text"]["num_hidden_layers"]
    assert sum("lora_A" in n for n in trainable) == 4 * layers  # q/k/v/o of the language model only
    assert not any("visual" in n for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)
    batch = make_batch(coc=["move to the cube, then close the gripper", None, "pull the handle"])
    logs = train_steps(policy, batch, steps=10)
    assert logs[-1]["action_loss"] < 0.5 * logs[0]["action_loss"]
    assert logs[-1]["text_loss"] < logs[0]["text_loss"]
    assert logs[-1]["world_loss"] < logs[0]["world_loss"]
    assert logs[0]["coc_fraction"] == pytest.approx(2 / 3)
    # The <ACT_i> embedding rows are trained (the adapter holds them), the rest of the vocabulary is not.
    embed = policy.backbone.get_base_model().get_input_embeddings()
    assert not torch.equal(
        embed.token_adapter.trainable_tokens_delta["default"],
        embed.token_adapter.base_layer.weight[policy.config.act_token_ids],
    )


def test_world_memory_and_proprio_do_no_harm_at_gate_zero(folders, encoder_spec):
    policy = make_policy(folders, encoder_spec, use_proprio=True).eval()
    batch = make_batch()
    nan_batch = {**batch, WORLD_LATENTS: torch.full_like(batch[WORLD_LATENTS], float("nan"))}
    none = policy.predict_action_chunk(batch, memory_mode="none")
    assert torch.equal(none, policy.predict_action_chunk(batch, memory_mode="pred"))
    assert torch.equal(none, policy.predict_action_chunk(nan_batch, memory_mode="pred"))
    assert torch.equal(none, policy.predict_action_chunk(batch, memory_mode="random"))
    other_state = {**batch, "observation.state": torch.randn(BATCH, STATE_DIM)}
    assert torch.equal(none, policy.predict_action_chunk(other_state, memory_mode="none"))
    with torch.no_grad():
        policy.world.cross_attn.gate.fill_(0.5)
        policy.proprio_gate.fill_(0.5)
    assert not torch.equal(none, policy.predict_action_chunk(batch, memory_mode="pred"))
    assert not torch.equal(
        policy.predict_action_chunk(batch, memory_mode="none"),
        policy.predict_action_chunk(other_state, memory_mode="none"),
    )


@pytest.mark.parametrize("backbone", list(NAMES))
def test_coc_text_cannot_reach_the_action_path(folders, encoder_spec, backbone):
    """joint_after_act: another CoC text changes the text loss but no <ACT_i> state and no action."""
    policy = make_policy(folders, encoder_spec, backbone, use_proprio=True, lambda_text=1.0).eval()
    with torch.no_grad():  # open every gate, so the check covers the whole action path
        policy.world.cross_attn.gate.fill_(0.5)
        policy.proprio_gate.fill_(0.5)
    batch = make_batch()
    texts_a = ["reach the cube and grasp it", "push the button", None]
    texts_b = ["lift", "the drawer is closed so pull the handle hard", "move left then down"]
    with torch.no_grad():
        h_a, loss_a = policy._act_states(batch, texts_a)
        h_b, loss_b = policy._act_states(batch, texts_b)
        h_none, _ = policy._act_states(batch)
        actions_a, actions_b = (policy._actions(h, batch, "pred") for h in (h_a, h_b))
    assert torch.equal(h_a, h_b)
    assert torch.equal(actions_a, actions_b)
    assert loss_a is not None and loss_b is not None and loss_a != loss_b
    # Without CoC (the rollout prompt) the <ACT_i> states are the same up to float rounding.
    torch.testing.assert_close(h_none, h_a, rtol=1e-4, atol=1e-4)


def test_separate_text_pass_and_coc_requirements(folders, encoder_spec):
    policy = make_policy(folders, encoder_spec, lambda_text=1.0, text_loss_mode="separate", use_world_module=False)
    loss, logs = policy(make_batch(coc=[None, "open the drawer", None]))
    loss.backward()
    assert logs["text_loss"] > 0 and logs["coc_fraction"] == pytest.approx(1 / 3)
    _, logs = policy(make_batch(coc=[None, None, None]))
    assert "text_loss" not in logs
    with pytest.raises(KeyError, match="coc_text"):
        policy(make_batch())
    strict = make_policy(folders, encoder_spec, lambda_text=1.0, require_coc=True, use_world_module=False)
    with pytest.raises(ValueError, match=r"episode\(s\) \[6\]"):
        strict(make_batch(coc=["a", None, "c"]))


@pytest.mark.slow  # inductor compiles a decoder layer on the CPU (~1 min)
def test_compiled_decoder_layers_give_the_same_actions(folders, encoder_spec):
    """`compile_model` compiles each language-model decoder layer; actions and the training loss stay
    those of the eager policy with the same weights."""
    from lerobot_policy_world_modality.qwen_vla_world.modeling_qwen_vla_world import decoder_layers

    eager = make_policy(folders, encoder_spec).eval()
    compiled = make_policy(folders, encoder_spec, compile_model=True).eval()
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for policy in (eager, compiled):
            policy.world.cross_attn.gate.fill_(0.5)
    layers = decoder_layers(compiled.backbone.get_base_model())
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(eager.backbone.get_base_model()))
    batch = make_batch()
    torch.testing.assert_close(
        compiled.predict_action_chunk(dict(batch)), eager.predict_action_chunk(dict(batch)), rtol=1e-4, atol=1e-4
    )
    loss_eager, _ = eager.train().forward(dict(batch))
    loss_compiled, _ = compiled.train().forward(dict(batch))
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-4)
    loss_compiled.backward()
    assert compiled.world.cross_attn.gate.grad is not None
    with pytest.raises(ValueError, match="compile_mode"):
        make_config(folders, encoder_spec, compile_model=True, compile_mode="reduce-overhead")


def test_prompt_is_one_function_and_refuses_empty_instructions(folders, encoder_spec):
    policy = make_policy(folders, encoder_spec, use_world_module=False).eval()
    prompt = build_prompt(policy.config.prompt_format, " open the drawer ", CHUNK)
    assert prompt.endswith("open the drawer<|im_end|>\n<|im_start|>assistant\n<ACT_0><ACT_1><ACT_2><ACT_3>")
    ids = policy.processor.tokenizer(prompt)["input_ids"]
    assert ids[-CHUNK:] == policy.config.act_token_ids
    for empty in ("", "   ", None):
        batch = make_batch()
        batch["task"] = ["reach", empty, "push"]
        with pytest.raises(ValueError, match="empty instruction"):
            policy.predict_action_chunk(batch)
    batch = make_batch()
    batch["task"] = ["reach", "press <ACT_1> now", "push"]
    with pytest.raises(ValueError, match="hold them once"):
        policy.predict_action_chunk(batch)
    del batch["task"]
    with pytest.raises(KeyError, match="task"):
        policy.predict_action_chunk(batch)


def test_rollout_observe_select_action_and_wrist_concat(folders, encoder_spec):
    policy = make_policy(folders, encoder_spec, wrist_key=WRIST_KEY, wrist_mode="concat").eval()
    with torch.no_grad():
        policy.world.cross_attn.gate.fill_(0.5)
    batch = make_batch(with_latents=False)
    del batch["action"], batch["action_is_pad"]
    observed = policy.observe(batch)
    assert observed[WORLD_LATENTS].shape == (BATCH, T, ENV_DIM)
    assert observed[WORLD_LATENTS_MASK].sum(1).tolist() == [1] * BATCH
    policy.reset()
    actions = [policy.select_action(batch) for _ in range(3)]
    assert all(a.shape == (BATCH, ACTION_DIM) for a in actions)
    assert policy._history._mask.sum(1).tolist() == [3] * BATCH  # every call's frame entered the history
    policy.reset()
    assert policy._history._mask is None
    other_wrist = {**batch, WRIST_KEY: torch.rand(BATCH, 3, 64, 64)}
    policy.reset()
    first = policy.predict_action_chunk(batch)
    policy.reset()
    assert not torch.equal(first, policy.predict_action_chunk(other_wrist))


def test_rollout_tokenises_each_prompt_once_with_the_same_actions(folders, encoder_spec):
    """Eval mode tokenises each distinct prompt batch once (the chunks of an episode share it), training mode every
    batch; the actions are those without the cache, bit for bit."""
    policy = make_policy(folders, encoder_spec)
    with torch.no_grad():
        policy.world.cross_attn.gate.fill_(0.5)  # so the world memory (read at every chunk) matters
    cache = policy.processor.tokenizer
    assert isinstance(cache, CachedTokenizer) and not cache.enabled  # a new policy is in training mode
    counting = cache.tokenizer = CountingTokenizer(cache.tokenizer)
    mixed = ["pick up the red cube", "reach the goal", "open the drawer now"]
    # Episodes: a batch mixing instructions; the same, whose instructions change order at its fourth step;
    # one instruction in every row.
    episodes = [[mixed] * 5, [mixed] * 3 + [mixed[::-1]] * 2, [["reach the goal"] * BATCH] * 5]

    def rollout(tasks: list[list[str]]) -> torch.Tensor:
        policy.reset()
        torch.manual_seed(3)
        actions = []
        for seed, step in enumerate(tasks):
            batch = make_batch(seed=seed, with_latents=False)
            del batch["action"], batch["action_is_pad"]
            actions.append(policy.select_action(batch | {"task": step}))
        return torch.stack(actions)

    policy.train()
    for _ in range(2):
        policy.predict_action_chunk(make_batch(with_latents=False))
    assert len(counting.texts) == 2 and not cache._calls

    policy.eval()
    counting.texts.clear()
    cached = [rollout(tasks) for tasks in episodes]
    assert len(counting.texts) == 3  # mixed, mixed reversed, reach everywhere (its one distinct prompt)
    assert [[p.count("reach the goal") for p in texts] for texts in counting.texts] == [[0, 1, 0]] * 2 + [[1]]
    cache.enabled = False
    counting.texts.clear()
    assert all(torch.equal(a, rollout(tasks)) for a, tasks in zip(cached, episodes, strict=True))
    assert len(counting.texts) == 9  # a chunk every n_action_steps=2 steps: 3 per episode


def test_flow_head_frozen_backbone_and_plain_lerobot_batches(folders, encoder_spec):
    policy = make_policy(
        folders,
        encoder_spec,
        "qwen2_5_vl",
        action_head="flow",
        flow_steps=3,
        finetune="frozen",
        gradient_checkpointing=True,
    )
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    assert trainable and all("trainable_tokens" in n for n in trainable)
    # No latent cache (plain lerobot-train): the current frame is encoded online, no world loss.
    loss, logs = policy(make_batch(with_latents=False))
    loss.backward()
    assert torch.isfinite(loss) and "world_loss" not in logs
    assert policy.predict_action_chunk(make_batch()).shape == (BATCH, CHUNK, ACTION_DIM)


ROUND_TRIP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from lerobot_policy_world_modality.qwen_vla_world.modeling_qwen_vla_world import QwenVLAWorldPolicy
    batch = torch.load(sys.argv[1])
    for checkpoint, out in zip(sys.argv[2::2], sys.argv[3::2]):
        policy = QwenVLAWorldPolicy.from_pretrained(checkpoint)
        torch.save(policy.predict_action_chunk(batch, memory_mode="pred"), out)
""")


def test_checkpoint_round_trip_in_a_fresh_process(folders, encoder_spec, tmp_path):
    """Both backbones, LoRA and frozen (trainable <ACT_i> rows only): train, save, reload in one fresh
    process (one interpreter start for both: imports dominate), identical actions."""
    batch = make_batch(coc=["grasp the cube", "push", "pull"])
    action_batch = {k: v for k, v in batch.items() if k != "coc_text"}
    torch.save(action_batch, tmp_path / "batch.pt")
    runs = {}
    for backbone, finetune in (("qwen3_vl", "lora"), ("qwen2_5_vl", "frozen")):
        policy = make_policy(folders, encoder_spec, backbone, use_proprio=True, lambda_text=0.5, finetune=finetune)
        train_steps(policy, batch, steps=4, lr=1e-2)
        assert policy.world.cross_attn.gate.item() != 0 and policy.proprio_gate.item() != 0
        checkpoint = tmp_path / backbone
        policy.save_pretrained(checkpoint)
        assert {"config.json", "model.safetensors", ADAPTER_DIR} <= {p.name for p in checkpoint.iterdir()}
        runs[backbone] = (checkpoint, policy.predict_action_chunk(action_batch, memory_mode="pred"))
    args = [str(tmp_path / "batch.pt")]
    for backbone, (checkpoint, _) in runs.items():
        args += [str(checkpoint), str(tmp_path / f"{backbone}.pt")]
    subprocess.run(
        [sys.executable, "-c", ROUND_TRIP_SCRIPT, *args], check=True, env=SUBPROCESS_ENV, capture_output=True
    )
    for backbone, (_, expected) in runs.items():
        assert torch.equal(torch.load(tmp_path / f"{backbone}.pt"), expected), backbone

    # Every part must be there: no silent random initialisation, no other backbone.
    checkpoint = runs["qwen3_vl"][0]
    broken = tmp_path / "no_adapter"
    shutil.copytree(checkpoint, broken)
    shutil.rmtree(broken / ADAPTER_DIR)
    with pytest.raises(FileNotFoundError, match="adapter"):
        QwenVLAWorldPolicy.from_pretrained(broken)
    other = tmp_path / "other_backbone"
    shutil.copytree(folders["qwen3_vl"], other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")
    config = QwenVLAWorldConfig.from_pretrained(checkpoint)
    config.backbone_path = str(other)
    with pytest.raises(ValueError, match="fingerprint"):
        QwenVLAWorldPolicy.from_pretrained(checkpoint, config=config)


def test_full_finetuning_trains_and_saves_the_whole_backbone(folders, encoder_spec, tmp_path):
    """finetune='full' (a backbone trained from scratch): every backbone weight trains, the checkpoint holds them
    (the folder's are the untrained ones) and gives the same actions after loading; without them it is refused, and
    so are reduced-precision weights."""
    policy = make_policy(folders, encoder_spec, finetune="full")
    base = policy.backbone.get_base_model()
    assert all(p.requires_grad for p in base.parameters())
    before = {k: v.clone() for k, v in base.state_dict().items()}
    train_steps(policy, make_batch(), steps=2, lr=1e-2)
    after = base.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert {"visual", "language_model"} <= changed  # the vision tower and the language model both learned
    batch = make_batch(seed=1)
    expected = policy.predict_action_chunk(batch, memory_mode="pred")
    policy.save_pretrained(tmp_path / "full")
    loaded = QwenVLAWorldPolicy.from_pretrained(tmp_path / "full").eval()
    assert torch.equal(loaded.predict_action_chunk(batch, memory_mode="pred"), expected)
    (tmp_path / "full" / BACKBONE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="trained backbone"):
        QwenVLAWorldPolicy.from_pretrained(tmp_path / "full")
    with pytest.raises(InputError, match="float32"):
        make_config(folders, encoder_spec, finetune="full", backbone_dtype="bfloat16")


@pytest.mark.slow
def test_wm_train_and_eval_on_metaworld(metaworld_dataset, state_latents, folders, tmp_path):
    """The generic `wm train` (cached latents, camera frames, CoC labels by episode) and a short
    closed-loop `wm eval` run F+ on the session's tiny MetaWorld dataset."""
    import json

    from world_modality.atomic_io import read_jsonl
    from world_modality.rollout import evaluate_checkpoint
    from world_modality.training.checkpoint import load_checkpoint
    from world_modality.training.trainer import TrainOptions, train

    labels = tmp_path / "coc.jsonl"
    labels.write_text(
        "".join(
            json.dumps(
                {"episode_index": e, "coc_text": f"moves to the object, step {e}", "backend": "test", "keyframes": [0]}
            )
            + "\n"
            for e in (0, 1, 2)
        )
    )
    policy = {
        "backbone": "qwen3_vl_4b_instruct",
        "backbone_path": str(folders["qwen3_vl"]),
        "backbone_dtype": "float32",
        "chunk_size": 4,
        "n_action_steps": 2,
        "history_len": 3,
        "num_future": 2,
        "lambda_text": 0.5,
        "prophet_dim": 32,
        "prophet_heads": 2,
        "prophet_layers": 1,
        "cross_attn_heads": 2,
        "head_dim": 32,
        "lora_r": 4,
        "use_proprio": True,
    }
    checkpoint = train(
        TrainOptions(
            dataset=str(metaworld_dataset),
            latents=str(state_latents),
            out=str(tmp_path / "run"),
            policy_type="qwen_vla_world",
            steps=6,
            batch_size=4,
            save_every=6,
            policy=policy,
            coc_labels=str(labels),
            device="cpu",
            progress=False,
        )
    )
    loaded = load_checkpoint(checkpoint, device="cpu")
    assert loaded.policy.config.backbone == "qwen3_vl_4b_instruct" and loaded.policy.config.lambda_text == 0.5
    results = evaluate_checkpoint(
        checkpoint,
        tasks="reach-v3",
        episodes_per_task=1,
        workers=1,
        max_steps=6,
        device="cpu",
        arm="E4",
        train_seed=0,
        out_dir=tmp_path / "eval",
    )
    episodes = read_jsonl(results)
    assert len(episodes) == 1 and episodes[0]["arm"] == "E4"


class EagerReplay:
    """A `GraphedStep` stand-in that runs the captured function eagerly: the replay path's arguments on the CPU."""

    def __init__(self, fn):
        self.fn, self.keys = fn, []

    def __call__(self, *inputs, layout=None, key=None):
        self.keys.append(key)
        return self.fn(*inputs, layout=layout)

    def clear(self):
        pass


@pytest.mark.parametrize("action_head", ["flow", pytest.param("mse", marks=pytest.mark.slow)])
def test_the_graph_path_gives_the_eager_actions_bit_for_bit(folders, encoder_spec, action_head):
    """What a CUDA graph replays (`_replayed_chunk`: the prompt layout computed on the host, `layout_forward`, the
    memory prepared ahead and the head's noise drawn ahead) gives `predict_action_chunk`'s eager actions exactly, for
    every rollout memory mode, with proprio, at batch 1 and at batch 3 (left padding: a 4-D attention mask)."""
    from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS

    policy = make_policy(folders, encoder_spec, action_head=action_head, use_proprio=True, cuda_graphs="chunk").eval()
    assert policy._graphed is not None
    with torch.no_grad():
        policy.world.cross_attn.gate.fill_(0.5)
        policy.proprio_gate.fill_(0.3)
    replay = policy._graphed = EagerReplay(policy._chunk_from_layout)
    for size in (1, BATCH):
        batch = {k: v[:size] if isinstance(v, torch.Tensor | list) else v for k, v in make_batch(seed=size).items()}
        for mode in ("pred", "zero", "oracle", "random", "none"):

            def run(fast: bool):
                generators = [torch.Generator().manual_seed(10 + i) for i in range(size)]
                given = batch | {ROLLOUT_GENERATORS: generators}
                with torch.no_grad():
                    if fast:
                        return policy._replayed_chunk(policy.observe(given), mode)
                    return policy.predict_action_chunk(given, memory_mode=mode)

            eager, fast = run(False), run(True)
            assert fast.shape == (size, CHUNK, ACTION_DIM) and torch.equal(fast, eager), (size, mode)
    assert len(policy._layouts) == 2 and replay.keys[0] == (
        (1, 4, 4),
    )  # one layout per prompt batch; the grid tells graphs apart
    # Qwen2.5-VL and compiled backbones stay eager; an unknown scope is refused.
    assert make_policy(folders, encoder_spec, backbone="qwen2_5_vl", cuda_graphs="chunk")._graphed is None
    assert make_policy(folders, encoder_spec, compile_model=True)._graphed is None
    assert make_policy(folders, encoder_spec)._graphed is not None  # the default (checked on a GPU)
    policy.use_cuda_graphs("off")
    assert policy._graphed is None and policy.config.cuda_graphs == "off"
    with pytest.raises(InputError, match="cuda_graphs must be one of"):
        policy.use_cuda_graphs("step")
