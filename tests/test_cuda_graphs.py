"""CUDA-graph replay of SmolVLA-world's and F+'s inference (`common/cuda_graphs.py`, `cuda_graphs` in the config).

The host-constant bookkeeping and the synchronisation-free vision tower run anywhere; capture and replay need a CUDA
device (skipped without one, run on the GPU machine): the replayed policy, a whole chunk or each denoising step, must
give the eager policy's actions, for E0 and E2, under several memory modes and batch sizes, in float32 and under
bf16 autocast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lerobot_policy_world_modality.common.cuda_graphs import (
    GraphedStep,
    HostConstants,
    _autocast_state,
    _target_device,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _constants_of(record, replay):
    with HostConstants(record, replay=replay, device_type="cpu") as mode:
        mask = torch.tensor([1, 0, 1], dtype=torch.bool, device="cpu")
        scale = torch.tensor(0.5, device=torch.device("cpu"))
        untouched = torch.tensor([7.0])  # names no device: not a host copy onto one
    return mode, (mask, scale, untouched)


def test_host_constants_are_recorded_once_and_handed_back_in_call_order():
    record = []
    _, (mask, scale, untouched) = _constants_of(record, replay=False)
    assert [result for _, result in record] == [mask, scale] and untouched.tolist() == [7.0]
    mode, (mask_again, scale_again, _) = _constants_of(record, replay=True)
    assert mask_again is mask and scale_again is scale  # the recorded tensors themselves, no new copy
    mode.check_complete()


def test_host_constants_refuse_other_data_or_another_number_of_constants_at_capture():
    record = []
    _constants_of(record, replay=False)
    with pytest.raises(RuntimeError, match="other host data at capture"):
        with HostConstants(record, replay=True, device_type="cpu"):
            torch.tensor([1, 1, 1], dtype=torch.bool, device="cpu")
    with pytest.raises(RuntimeError, match="more host constants than its warm-up run"):
        with HostConstants(record[:1], replay=True, device_type="cpu"):
            torch.tensor([1, 0, 1], dtype=torch.bool, device="cpu")
            torch.tensor(0.5, device="cpu")
    with HostConstants(record, replay=True, device_type="cpu") as mode:
        torch.tensor([1, 0, 1], dtype=torch.bool, device="cpu")
    with pytest.raises(RuntimeError, match="made 1 host constants, its warm-up run 2"):
        mode.check_complete()


def test_moves_onto_the_gpu_are_recognised_in_every_spelling():
    x, on_gpu = torch.ones(2), torch.device("cuda")
    assert _target_device(torch.Tensor.to, (x, "cuda"), {}) == on_gpu
    assert _target_device(torch.Tensor.to, (x,), {"device": torch.device("cuda")}) == on_gpu
    assert _target_device(torch.Tensor.to, (x, torch.float16), {}) is None  # a cast only
    assert _target_device(torch.Tensor.to, (x, torch.empty(0, device="meta")), {}) == torch.device("meta")
    assert _target_device(torch.Tensor.cuda, (x,), {}) == on_gpu
    assert _target_device(torch.tensor, ([1],), {"device": "cuda:0"}) == torch.device("cuda:0")


def test_autocast_off_is_one_signature_whatever_dtype_its_block_names():
    """A graph captured outside autocast replays inside `torch.autocast(..., enabled=False)`, which still sets a dtype,
    and the other way round (autocast on in bf16 or fp16 are two signatures: the GPU tests capture both)."""
    outside = _autocast_state()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype, enabled=False):
            assert _autocast_state() == outside == (False, None)


@needs_cuda
def test_a_graphed_step_replays_with_each_calls_inputs_and_one_graph_per_signature():
    def step(x, bias, unused):
        return x * torch.tensor([2.0, 3.0], device=x.device) + bias

    graphed = GraphedStep(step)
    bias = torch.ones(2, device="cuda")
    for batch in (1, 4, 1):
        x = torch.randn(batch, 2, device="cuda")
        torch.testing.assert_close(graphed(x, bias, None), step(x, bias, None))  # bias: the same tensor, not copied
    other_bias = bias + 5.0
    torch.testing.assert_close(graphed(x, other_bias, None), step(x, other_bias, None))
    assert graphed.captured == 2


# --- SmolVLA-world --------------------------------------------------------------------------------------------

CAMERA, LATENT_KEY = "observation.images.image", "observation.environment_state"
TINY = {
    "chunk_size": 6,
    "n_action_steps": 6,
    "num_steps": 4,
    "resize_imgs_with_padding": (64, 64),
    "max_state_dim": 8,
    "max_action_dim": 8,
    "tokenizer_max_length": 12,
    "history_len": 3,
    "num_future": 2,
    "prophet_dim": 32,
    "prophet_heads": 2,
    "prophet_layers": 1,
    "cross_attn_heads": 2,
}


def _policies(tmp_path: Path, device: str = "cuda", scope: str = "chunk", **overrides):
    """The same tiny SmolVLA-world weights eager (key False) and replayed from ``scope`` graphs (key True), on
    ``device``, the gate open (the memory is
    read, so a wrong memory buffer would change the actions)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_policy_world_modality.encoders import build_encoder, fit_state_encoder
    from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import SmolVLAWorldPolicy
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    folder = write_smolvlm_folder(tmp_path / "smolvlm", "tiny")
    spec = build_encoder("state", fit_state_encoder(torch.randn(16, 12), tmp_path / "spec", state_key=LATENT_KEY)).spec
    inputs = {
        CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 48, 48)),
        "observation.state": PolicyFeature(FeatureType.STATE, (4,)),
        LATENT_KEY: PolicyFeature(FeatureType.ENV, (12,)),
    }
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (4,))}
    policies = {}
    for graphs in (False, True):
        config = SmolVLAWorldConfig(
            input_features=inputs,
            output_features=outputs,
            vlm_model_name=str(folder),
            encoder_spec=spec.to_dict(),
            device=device,
            cuda_graphs=scope if graphs else "off",
            **{**TINY, **overrides},
        )
        torch.manual_seed(0)
        policies[graphs] = SmolVLAWorldPolicy(config)
    policies[True].load_state_dict(policies[False].state_dict())
    for policy in policies.values():
        if policy.config.use_world_module:
            with torch.no_grad():
                policy.model.world.cross_attn.gate.fill_(0.7)
        policy.to(device).eval()
    return policies


def _batch(batch_size: int, seed: int, device: str = "cuda") -> dict:
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    from lerobot_policy_world_modality.world.history import (
        WORLD_FUTURE,
        WORLD_FUTURE_MASK,
        WORLD_LATENTS,
        WORLD_LATENTS_MASK,
    )

    g = torch.Generator().manual_seed(seed)
    batch = {
        CAMERA: torch.rand(batch_size, 3, 48, 48, generator=g),
        "observation.state": torch.randn(batch_size, 4, generator=g),
        OBS_LANGUAGE_TOKENS: torch.randint(10, 400, (batch_size, 12), generator=g),
        OBS_LANGUAGE_ATTENTION_MASK: torch.ones(batch_size, 12, dtype=torch.bool),
        WORLD_LATENTS: torch.randn(batch_size, 3, 12, generator=g),
        WORLD_LATENTS_MASK: torch.tensor([[False, True, True]] * batch_size),
        WORLD_FUTURE: torch.randn(batch_size, 2, 12, generator=g),
        WORLD_FUTURE_MASK: torch.ones(batch_size, 2, dtype=torch.bool),
    }
    return {key: value.to(device) for key, value in batch.items()}


@needs_cuda
@pytest.mark.parametrize("scope", ["chunk", "step"])
@pytest.mark.parametrize("use_world_module", [False, True], ids=["E0", "E2"])
def test_graph_replay_gives_the_eager_actions(tmp_path, use_world_module, scope):
    policies = _policies(tmp_path, scope=scope, use_world_module=use_world_module)
    modes = ("pred", "zero", "oracle", "none") if use_world_module else (None,)
    for batch_size, seed in ((1, 0), (3, 1), (1, 2)):  # a second signature, then the first again with new data
        batch = _batch(batch_size, seed)
        noise = torch.randn(batch_size, 6, 8, generator=torch.Generator().manual_seed(seed)).to("cuda")
        for mode in modes:
            kwargs = {"memory_mode": mode} if mode else {}
            eager = policies[False].predict_action_chunk(dict(batch), noise=noise, **kwargs)
            replayed = policies[True].predict_action_chunk(dict(batch), noise=noise, **kwargs)
            torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-4)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                eager = policies[False].predict_action_chunk(dict(batch), noise=noise, **kwargs)
                replayed = policies[True].predict_action_chunk(dict(batch), noise=noise, **kwargs)
            torch.testing.assert_close(replayed, eager, rtol=0.05, atol=0.05)
    step = policies[True].model._graphed
    captured = step.captured
    assert captured >= 4  # batch 1 and 3, float32 and bf16
    policies[True].predict_action_chunk(dict(_batch(1, 5)), noise=torch.randn(1, 6, 8, device="cuda"))
    assert step.captured == captured  # a signature seen before replays its graph
    policies[True].to("cpu")
    assert step.captured == 0  # moved weights: the graphs are forgotten


def test_the_denoising_step_stays_eager_on_the_cpu(tmp_path):
    policies = _policies(tmp_path, device="cpu")
    batch, noise = _batch(2, 0, "cpu"), torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    eager = policies[False].predict_action_chunk(dict(batch), noise=noise)
    assert torch.equal(policies[True].predict_action_chunk(dict(batch), noise=noise), eager)
    assert policies[True].model._graphed.captured == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", [64, 48, 80])  # the tower's own grid, a smaller and a larger one
def test_the_full_grid_vision_tower_gives_transformers_output_bit_for_bit(tmp_path, side, dtype):
    from transformers import AutoConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

    from lerobot_policy_world_modality.smolvla_world.vision import FullGridVisionTransformer, use_full_grid_vision
    from world_modality.model_folders.smolvlm import write_smolvlm_folder

    folder = write_smolvlm_folder(tmp_path / "smolvlm", "tiny")
    torch.manual_seed(0)
    tower = SmolVLMVisionTransformer(AutoConfig.from_pretrained(folder).vision_config).to(dtype).eval()
    pixels = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(side)).to(dtype)
    with torch.no_grad():
        expected = tower(pixel_values=pixels, patch_attention_mask=None).last_hidden_state
        use_full_grid_vision(tower)
        assert isinstance(tower, FullGridVisionTransformer)
        assert torch.equal(tower(pixel_values=pixels, patch_attention_mask=None).last_hidden_state, expected)


def test_a_policy_switches_its_graph_scope_and_refuses_an_unknown_one(tmp_path):
    from lerobot_policy_world_modality.common import GraphedStep
    from lerobot_policy_world_modality.errors import InputError

    policy = _policies(tmp_path, device="cpu")[True]
    assert isinstance(policy.model._graphed, GraphedStep) and policy.config.cuda_graphs == "chunk"
    policy.use_cuda_graphs("off")  # `wm eval --eager`
    assert policy.model._graphed is None and policy.config.cuda_graphs == "off"
    policy.use_cuda_graphs("step")
    assert policy.model._graphed.fn == policy.model._step_from_buffers
    with pytest.raises(InputError, match="cuda_graphs must be one of"):
        policy.use_cuda_graphs("always")


def test_an_unknown_graph_scope_is_refused():
    from lerobot_policy_world_modality.errors import InputError
    from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import SmolVLAWorldConfig

    with pytest.raises(InputError, match=r"cuda_graphs must be one of \('chunk', 'step', 'off'\), got 'on'"):
        SmolVLAWorldConfig(cuda_graphs="on")


def test_nested_memory_readers_restore_the_outer_one():
    from lerobot_policy_world_modality.smolvla_world.modeling_smolvla_world import WorldFlowMatching

    model = WorldFlowMatching.__new__(WorldFlowMatching)
    torch.nn.Module.__init__(model)
    model._read_memory = None
    outer, inner = (lambda h: h + 1), (lambda h: h + 2)
    with model.reading_memory(outer):
        with model.reading_memory(inner):
            assert model._read_memory is inner
        assert model._read_memory is outer
    assert model._read_memory is None


@needs_cuda
@pytest.mark.parametrize("action_head", ["flow", "mse"])
def test_f_plus_chunk_replay_gives_the_eager_actions(tmp_path, action_head):
    """F+ on a tiny Qwen3-VL: the chunk replayed from a CUDA graph (backbone pass on the prompt layout, memory read,
    head) gives the eager actions, under each memory mode, at batch 1 and 3 (padded prompts), in float32 and bf16
    autocast; a seen signature replays its graph; moving the weights forgets the graphs."""
    import test_qwen_vla_world as fplus
    from lerobot_policy_world_modality.encoders import StateEncoder, fit_state_encoder
    from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS
    from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

    folders = {"qwen3_vl": write_qwen_vl_folder(tmp_path / "qwen", "qwen3_vl", "tiny")}
    spec = StateEncoder.load(fit_state_encoder(torch.randn(64, fplus.ENV_DIM), tmp_path / "spec")).spec.to_dict()
    policies = {}
    for scope in ("off", "chunk"):
        policies[scope] = fplus.make_policy(
            folders, spec, action_head=action_head, use_proprio=True, cuda_graphs=scope, device="cuda"
        )
    policies["chunk"].load_state_dict(policies["off"].state_dict())
    for policy in policies.values():
        with torch.no_grad():
            policy.world.cross_attn.gate.fill_(0.7)
            policy.proprio_gate.fill_(0.3)
        policy.to("cuda").eval()
    step = policies["chunk"]._graphed
    for size, seed in ((1, 0), (3, 1), (1, 2)):
        batch = _rows(fplus.make_batch(seed=seed), size)
        for mode in ("pred", "zero", "oracle", "none"):
            for autocast, tolerance in ((False, 1e-4), (True, 0.05)):
                actions = {}
                for scope, policy in policies.items():
                    generators = [torch.Generator().manual_seed(10 + i) for i in range(size)]
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                        actions[scope] = policy.predict_action_chunk(
                            batch | {ROLLOUT_GENERATORS: generators}, memory_mode=mode
                        )
                torch.testing.assert_close(actions["chunk"], actions["off"], rtol=tolerance, atol=tolerance)
    captured = step.captured
    assert captured >= 4  # batch 1 and 3, float32 and bf16
    batch = _rows(fplus.make_batch(seed=7), 1)
    with torch.no_grad():
        policies["chunk"].predict_action_chunk(batch)
    assert step.captured == captured
    policies["chunk"].to("cpu")
    assert step.captured == 0


def _rows(batch: dict, size: int) -> dict:
    """The first ``size`` samples of a CPU batch, its tensors on the GPU (as a rollout hands them over)."""
    return {
        key: value[:size].to("cuda")
        if isinstance(value, torch.Tensor)
        else value[:size]
        if isinstance(value, list)
        else value
        for key, value in batch.items()
    }
