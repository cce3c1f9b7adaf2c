"""Tests for the shared world module (Prophet, gated memory injection, memory modes, losses)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lerobot_policy_world_modality.world import (
    GatedCrossAttention,
    MemoryMode,
    MemorySourceSchedule,
    Prophet,
    ProphetConfig,
    WorldModule,
    WorldModuleConfig,
    apply_memory_mode,
    total_loss,
    world_cosine_loss,
)
from lerobot_policy_world_modality.world.gated_cross_attention import _GatedResidual

B, K, D, D_MODEL = 4, 3, 8, 16


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


# --- Prophet ---------------------------------------------------------------------------------


def test_prophet_shapes_and_short_history() -> None:
    prophet = Prophet(ProphetConfig(latent_dim=D, num_future=K, history_len=5, d_model=32))
    assert prophet(torch.randn(B, 5, D)).shape == (B, K, D)
    assert prophet(torch.randn(B, 2, D)).shape == (B, K, D)
    with pytest.raises(ValueError, match="history_len"):
        prophet(torch.randn(B, 6, D))


@pytest.mark.parametrize("delta", [False, True])
def test_prophet_delta_mode_adds_current_latent_back(delta: bool) -> None:
    prophet = Prophet(ProphetConfig(latent_dim=D, num_future=K, history_len=4, d_model=32, delta=delta))
    nn.init.zeros_(prophet.out_head.weight)
    nn.init.zeros_(prophet.out_head.bias)
    z_history = torch.randn(B, 4, D)
    expected = z_history[:, -1:].expand(B, K, D) if delta else torch.zeros(B, K, D)
    assert torch.equal(prophet(z_history), expected)


def test_prophet_history_mask_hides_padding() -> None:
    prophet = Prophet(ProphetConfig(latent_dim=D, num_future=K, history_len=4, d_model=32)).eval()
    z_history = torch.randn(B, 4, D)
    mask = torch.ones(B, 4, dtype=torch.bool)
    mask[:, :2] = False
    changed = z_history.clone()
    changed[:, :2] = 100.0
    torch.testing.assert_close(prophet(z_history, mask), prophet(changed, mask))
    assert not torch.allclose(prophet(z_history), prophet(changed))


# --- GatedCrossAttention ---------------------------------------------------------------------


def test_gate_initialised_to_zero_and_output_bit_identical() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K)
    assert gca.gate.item() == 0.0
    h = torch.randn(B, 5, D_MODEL)
    h[0, 0, 0] = -0.0  # `h + 0.0` would turn this into +0.0
    memory = torch.randn(B, K, D)
    out, weights = gca(h, memory)
    assert torch.equal(_bits(out), _bits(h))
    assert weights.shape == (B, 5, K)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, 5))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_do_no_harm_with_non_finite_memory(bad: float) -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K)
    h = torch.randn(B, 5, D_MODEL)
    memory = torch.randn(B, K, D)
    memory[1, 2, 3] = bad
    memory[2] = bad
    out, _ = gca(h, memory)
    assert torch.equal(_bits(out), _bits(h))


def test_gradient_reaches_gate_but_not_attention_at_zero() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K)
    h = torch.randn(B, 5, D_MODEL, requires_grad=True)
    out, _ = gca(h, torch.randn(B, K, D))
    out.square().sum().backward()
    assert gca.gate.grad is not None and gca.gate.grad.item() != 0.0
    for name, param in gca.named_parameters():
        if name != "gate":
            assert param.grad is None or torch.count_nonzero(param.grad) == 0, name
    torch.testing.assert_close(h.grad, 2 * h.detach())


@pytest.mark.parametrize("gate", [0.0, 0.3])
def test_gated_residual_backward_matches_finite_differences(gate: float) -> None:
    inputs = (
        torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True),
        torch.tensor(gate, dtype=torch.double, requires_grad=True),
        torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True),
    )
    assert torch.autograd.gradcheck(_GatedResidual.apply, inputs)


def test_nonzero_gate_uses_memory() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K)
    with torch.no_grad():
        gca.gate.fill_(0.5)
    h = torch.randn(B, 5, D_MODEL)
    out_a, _ = gca(h, torch.randn(B, K, D))
    out_b, _ = gca(h, torch.randn(B, K, D))
    assert not torch.allclose(out_a, out_b)


def test_gate_moves_when_memory_carries_the_answer() -> None:
    torch.manual_seed(0)
    gca = GatedCrossAttention(D_MODEL, D_MODEL, num_future=1)
    opt = torch.optim.Adam(gca.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        h = torch.randn(32, 1, D_MODEL)
        memory = torch.randn(32, 1, D_MODEL)
        out, _ = gca(h, memory)
        loss = (out - (h + memory)).square().mean()  # the target needs the memory
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) == 1:
            assert gca.gate.item() != 0.0  # one step suffices to leave zero
    assert abs(gca.gate.item()) > 0.1
    assert losses[-1] < 0.9 * losses[0]


def test_memory_mask_ignores_slots_and_empty_rows_stay_finite() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K)
    with torch.no_grad():
        gca.gate.fill_(1.0)
    h = torch.randn(B, 2, D_MODEL)
    memory = torch.randn(B, K, D)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, 2] = False
    mask[1] = False
    memory[0, 2] = math.nan  # padded futures may hold anything
    memory[1] = math.inf
    out, weights = gca(h, memory, mask)
    assert torch.all(weights[0, :, 2] == 0)
    assert torch.all(weights[1] == 0)
    assert torch.equal(out[1], h[1])
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="future slots"):
        gca(h, torch.randn(B, K + 1, D))


def test_prepared_memory_read_matches_forward_with_masks() -> None:
    """The inference path (keys/values projected once, fused attention) gives `forward`'s output,
    masked slots, samples without memory and the zero gate included."""
    gca = GatedCrossAttention(D_MODEL, D, num_future=K, num_heads=4).eval()
    h = torch.randn(B, 5, D_MODEL)
    memory = torch.randn(B, K, D)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, 2] = False
    mask[1] = False
    memory[0, 2] = math.nan
    memory[1] = math.inf
    assert torch.equal(gca.read(h, gca.prepare(memory, mask)), h)  # gate 0: the input bit for bit
    with torch.no_grad():
        gca.gate.fill_(0.8)
    for memory_mask in (None, mask):
        source = memory if memory_mask is not None else torch.randn(B, K, D)
        expected, _ = gca(h, source, memory_mask)
        prepared = gca.prepare(source, memory_mask)
        assert prepared.keys.shape == (B, 4, K, D_MODEL // 4)
        got = gca.read(h, prepared)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, h)
    assert torch.equal(gca.read(h, gca.prepare(memory, mask))[1], h[1])
    # One prepared memory serves any number of query sets (the denoising steps of a chunk).
    prepared, other = gca.prepare(memory[2:]), torch.randn(2, 5, D_MODEL)
    torch.testing.assert_close(gca.read(other, prepared), gca(other, memory[2:])[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="future slots"):
        gca.prepare(torch.randn(B, K + 1, D))


# --- memory modes ----------------------------------------------------------------------------


def test_memory_mode_names_and_parse_error() -> None:
    assert [m.value for m in MemoryMode] == ["pred", "zero", "random", "signflip", "shuffle", "oracle", "other", "none"]
    assert MemoryMode("signflip") is MemoryMode.SIGNFLIP
    with pytest.raises(ValueError) as err:
        apply_memory_mode("zeros", torch.randn(B, K, D))
    for name in ("pred", "zero", "random", "signflip", "shuffle", "oracle", "none"):
        assert repr(name) in str(err.value)


def test_simple_memory_modes() -> None:
    predicted = torch.randn(B, K, D)
    oracle = torch.randn(B, K, D)
    assert apply_memory_mode("pred", predicted) is predicted
    assert torch.equal(apply_memory_mode("zero", predicted), torch.zeros(B, K, D))
    assert torch.equal(apply_memory_mode("signflip", predicted), -predicted)
    assert torch.equal(apply_memory_mode("oracle", predicted, oracle), oracle)
    assert apply_memory_mode("none", predicted) is None
    with pytest.raises(ValueError, match="z_future"):
        apply_memory_mode("oracle", predicted, None)
    with pytest.raises(ValueError, match="shape"):
        apply_memory_mode("oracle", predicted, oracle[:, :2])


def test_shuffle_gives_another_samples_memory() -> None:
    predicted = torch.arange(6.0)[:, None, None].expand(6, K, D).clone()
    for seed in range(5):
        shuffled = apply_memory_mode("shuffle", predicted, generator=_gen(seed))
        sources = shuffled[:, 0, 0].long()
        assert sorted(sources.tolist()) == list(range(6))
        assert torch.all(sources != torch.arange(6))


def test_shuffle_batch_of_one_permutes_future_steps() -> None:
    predicted = torch.arange(4.0)[None, :, None].expand(1, 4, D).clone()
    shuffled = apply_memory_mode("shuffle", predicted, generator=_gen())
    sources = shuffled[0, :, 0].long()
    assert sorted(sources.tolist()) == list(range(4))
    assert torch.all(sources != torch.arange(4))
    with pytest.raises(ValueError, match="B == K == 1"):
        apply_memory_mode("shuffle", torch.randn(1, 1, D))


def test_random_matches_mean_and_std() -> None:
    mean = torch.linspace(-2.0, 2.0, D)
    std = torch.linspace(0.5, 3.0, D)
    predicted = mean + std * torch.randn(4096, K, D, generator=_gen(1))
    noise = apply_memory_mode("random", predicted, generator=_gen(2))
    assert noise.shape == predicted.shape
    # Standard error of a mean here is <= 3 / sqrt(4096 * 3) ~ 0.03.
    torch.testing.assert_close(noise.mean(dim=(0, 1)), predicted.mean(dim=(0, 1)), atol=0.15, rtol=0.0)
    torch.testing.assert_close(noise.std(dim=(0, 1)), predicted.std(dim=(0, 1)), atol=0.0, rtol=0.1)
    assert not torch.allclose(noise, predicted)
    assert torch.equal(noise, apply_memory_mode("random", predicted, generator=_gen(2)))


def test_random_of_one_memory_vector_is_noise_with_its_mean_and_std() -> None:
    """A rollout's episode with K == 1 reads one vector: its random control must still be noise."""
    predicted = 1.5 + 2.0 * torch.randn(1, 1, 4096, generator=_gen(3))
    noise = apply_memory_mode("random", predicted, generator=_gen(4))
    assert not torch.allclose(noise, predicted)
    assert abs(noise.mean().item() - predicted.mean().item()) < 0.15
    assert abs(noise.std().item() / predicted.std().item() - 1.0) < 0.1
    many = torch.randn(B, 1, D, generator=_gen(5))
    per_episode = apply_memory_mode("random", many, generator=[_gen(10 + i) for i in range(B)])
    assert not any(torch.allclose(per_episode[i], many[i]) for i in range(B))


@pytest.mark.parametrize("mode", ["random", "shuffle"])
def test_per_sample_generators_make_each_samples_control_its_own(mode: str) -> None:
    """Rollouts pass one generator per episode: each sample gets the mode as at batch size 1, drawn from its
    own generator, whatever the other samples of the batch are."""
    predicted = torch.randn(B, K, D, generator=_gen(7))
    together = apply_memory_mode(mode, predicted, generator=[_gen(10 + i) for i in range(B)])
    for i in range(B):
        alone = apply_memory_mode(mode, predicted[i : i + 1], generator=_gen(10 + i))
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=0)
    other_batch = torch.cat([predicted[:1], torch.randn(B - 1, K, D, generator=_gen(8))])
    first = apply_memory_mode(mode, other_batch, generator=[_gen(10 + i) for i in range(B)])[0]
    assert torch.equal(first, together[0])  # sample 0 does not see who its batch-mates are
    assert not torch.equal(together[0], apply_memory_mode(mode, predicted[:1], generator=_gen(99))[0])
    with pytest.raises(ValueError, match="3 memory generators for a batch of 4"):
        apply_memory_mode(mode, predicted, generator=[_gen(i) for i in range(3)])


def test_rollout_noise_draws_each_row_from_its_episodes_generator() -> None:
    from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS, rollout_noise

    noise = rollout_noise({ROLLOUT_GENERATORS: [_gen(1), _gen(2)]}, (2, 3, 5), "cpu")
    assert torch.equal(noise[1], torch.randn(3, 5, generator=_gen(2)))
    assert torch.equal(noise[0], torch.randn(3, 5, generator=_gen(1)))
    torch.manual_seed(0)
    assert torch.equal(rollout_noise({}, (2, 3, 5), "cpu"), torch.randn(2, 3, 5, generator=_gen(0)))


# --- memory source schedule ------------------------------------------------------------------


def test_schedule_oracle_fraction() -> None:
    scheduled = MemorySourceSchedule("scheduled", schedule_start_step=100, schedule_end_step=200)
    fractions = [scheduled.oracle_fraction(s) for s in (0, 100, 150, 175, 200, 1000)]
    assert fractions == [1.0, 1.0, 0.5, 0.25, 0.0, 0.0]
    assert MemorySourceSchedule("oracle").oracle_fraction(10**6) == 1.0
    assert MemorySourceSchedule("predicted").oracle_fraction(0) == 0.0
    with pytest.raises(ValueError, match="training step"):
        scheduled.oracle_fraction(None)
    with pytest.raises(ValueError, match="'predicted', 'oracle', 'scheduled'"):
        MemorySourceSchedule("teacher")
    with pytest.raises(ValueError, match="before"):
        MemorySourceSchedule("scheduled", schedule_start_step=10, schedule_end_step=5)


def test_schedule_mix_per_sample() -> None:
    predicted = torch.zeros(1000, K, D)
    oracle = torch.ones(1000, K, D)
    scheduled = MemorySourceSchedule("scheduled", schedule_start_step=0, schedule_end_step=100)
    mixed, realised = scheduled.mix(predicted, oracle, step=50, generator=_gen())
    per_sample = mixed[:, 0, 0]
    assert torch.all(mixed == per_sample[:, None, None])  # whole samples, not elements
    assert realised == pytest.approx(per_sample.mean().item())
    assert realised == pytest.approx(0.5, abs=0.05)
    assert scheduled.mix(predicted, oracle, step=100) == (predicted, 0.0)
    assert scheduled.mix(predicted, None, step=100)[0] is predicted  # no oracle needed at 0
    assert torch.equal(scheduled.mix(predicted, oracle, step=0)[0], oracle)
    with pytest.raises(ValueError, match="z_future"):
        scheduled.mix(predicted, None, step=0)


# --- losses ----------------------------------------------------------------------------------


def test_world_cosine_loss_values() -> None:
    z_pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 1.0]]])
    z_future = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [1.0, 0.0]]])
    # losses: [[0, 1], [2, 1 - 1/sqrt(2)]]
    loss, per_k = world_cosine_loss(z_pred, z_future)
    torch.testing.assert_close(per_k, torch.tensor([1.0, 1.0 - 0.5 / math.sqrt(2)]))
    torch.testing.assert_close(loss, torch.tensor((4.0 - 1.0 / math.sqrt(2)) / 4))


def test_world_cosine_loss_masking() -> None:
    z_pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    z_future = torch.tensor([[[0.0, 1.0], [math.nan, 0.0]], [[1.0, 0.0], [math.nan, 0.0]]])
    mask = torch.tensor([[True, False], [True, False]])
    loss, per_k = world_cosine_loss(z_pred, z_future, mask)
    torch.testing.assert_close(per_k, torch.tensor([0.5, 0.0]))  # k=2 has no valid entry
    torch.testing.assert_close(loss, torch.tensor(0.5))
    loss.backward()
    assert torch.isfinite(z_pred.grad).all()
    empty, _ = world_cosine_loss(z_pred, z_future, torch.zeros(2, 2, dtype=torch.bool))
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        world_cosine_loss(z_pred, z_future[:, :1])


def test_total_loss() -> None:
    action, world, text = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    assert total_loss(action, world, text, lambda_world=0.5, lambda_text=0.1).item() == (pytest.approx(2.3))
    assert total_loss(action, None, None, lambda_world=0.5).item() == 1.0


# --- WorldModule -----------------------------------------------------------------------------


def _world_module(**overrides: object) -> WorldModule:
    config = WorldModuleConfig(latent_dim=D, d_model=D_MODEL, num_future=K, history_len=4, prophet_dim=32, **overrides)  # type: ignore[arg-type]
    return WorldModule(config)


def test_world_module_outputs_and_log_dict() -> None:
    module = _world_module()
    h = torch.randn(B, 5, D_MODEL)
    h_out, outputs = module(h, torch.randn(B, 4, D), z_future=torch.randn(B, K, D))
    assert torch.equal(h_out, h)  # gate starts at 0
    assert outputs.z_pred.shape == (B, K, D)
    assert outputs.world_loss is not None and outputs.world_loss.requires_grad
    logs = outputs.log_dict()
    expected = {"world_gate_raw", "world_gate", "world_oracle_fraction", "world_loss"}
    expected |= {f"world_loss_k{k}" for k in range(1, K + 1)}
    expected |= {f"world_attn_mass_k{k}" for k in range(1, K + 1)}
    assert set(logs) == expected
    assert all(isinstance(v, float) for v in logs.values())
    assert sum(logs[f"world_attn_mass_k{k}"] for k in range(1, K + 1)) == pytest.approx(1.0)

    _, no_future = module(h, torch.randn(B, 4, D), mode="none")
    assert set(no_future.log_dict()) == {"world_gate_raw", "world_gate", "world_oracle_fraction"}


def test_world_module_training_uses_source_eval_uses_mode() -> None:
    module = _world_module(memory_source=MemorySourceSchedule("oracle"))
    h, z_history, z_future = torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D), torch.randn(B, K, D)
    _, train_out = module.train()(h, z_history, z_future)
    assert train_out.oracle_fraction == 1.0
    _, eval_out = module.eval()(h, z_history, z_future)
    assert eval_out.oracle_fraction == 0.0
    _, zero_out = module.train()(h, z_history, z_future, mode="zero")
    assert zero_out.oracle_fraction == 0.0
    with pytest.raises(ValueError, match="z_future"):
        module.eval()(h, z_history, mode="oracle")


def test_world_module_mode_changes_output_once_gate_open() -> None:
    module = _world_module().eval()
    with torch.no_grad():
        module.cross_attn.gate.fill_(1.0)
    h, z_history = torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D)
    pred, _ = module(h, z_history, mode="pred")
    flipped, _ = module(h, z_history, mode="signflip")
    baseline, outputs = module(h, z_history, mode="none")
    assert not torch.allclose(pred, flipped)
    assert torch.equal(baseline, h) and outputs.attn_mass is None


@pytest.mark.parametrize("detach", [False, True])
def test_detach_prophet_for_policy(detach: bool) -> None:
    module = _world_module(detach_prophet_for_policy=detach)
    with torch.no_grad():
        module.cross_attn.gate.fill_(1.0)
    h_out, _ = module(torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D))
    h_out.square().sum().backward()
    prophet_grads = [p.grad for p in module.prophet.parameters()]
    reached = any(g is not None and torch.count_nonzero(g) > 0 for g in prophet_grads)
    assert reached is not detach


@pytest.mark.parametrize("mode", ["pred", "zero", "signflip", "oracle", "none"])
def test_world_module_prepared_memory_matches_eval_forward(mode: str) -> None:
    module = _world_module().eval()
    with torch.no_grad():
        module.cross_attn.gate.fill_(0.6)
    h, z_history, z_future = torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D), torch.randn(B, K, D)
    history_mask = torch.ones(B, 4, dtype=torch.bool)
    history_mask[0, :2] = False
    expected, _ = module(h, z_history, z_future, mode=mode, history_mask=history_mask)
    prepared = module.prepare_memory(z_history, history_mask, z_future, mode)
    assert (prepared is None) == (mode == "none")
    for queries, reference in (
        (h, expected),
        (h.flip(1), module(h.flip(1), z_history, z_future, mode=mode, history_mask=history_mask)[0]),
    ):
        torch.testing.assert_close(module.read_memory(queries, prepared), reference, rtol=1e-5, atol=1e-5)


def test_scalars_to_floats_keeps_names_order_and_values() -> None:
    from lerobot_policy_world_modality.world import scalars_to_floats

    scalars = {
        "loss": torch.tensor(0.25),
        "fraction": 0.5,
        "gate": torch.tensor(-1.5, dtype=torch.float16),
        "step": torch.tensor(3),
    }
    assert scalars_to_floats(scalars) == {"loss": 0.25, "fraction": 0.5, "gate": -1.5, "step": 3.0}
    assert list(scalars_to_floats(scalars)) == list(scalars)
    assert scalars_to_floats({"fraction": 1}) == {"fraction": 1.0} and scalars_to_floats({}) == {}
    module = _world_module()
    _, outputs = module(torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D), z_future=torch.randn(B, K, D))
    assert outputs.log_dict() == {name: float(value) for name, value in outputs.log_tensors().items()}


def test_scheduled_source_reads_a_step_counter_tensor() -> None:
    schedule = MemorySourceSchedule("scheduled", 10, 20)
    for step in (0, 10, 15, 20, 30):
        assert schedule.oracle_fraction(torch.tensor(step)) == schedule.oracle_fraction(step)
    assert MemorySourceSchedule("predicted").oracle_fraction(None) == 0.0


# --- gate parametrisation and two-stage training (the recipes; tests/test_world_memory_recipes.py trains them)


def test_channel_gate_at_zero_is_bit_identical_and_learns_per_channel() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K, gate_type="channel")
    assert gca.gate.shape == (D_MODEL,) and torch.count_nonzero(gca.gate) == 0
    h = torch.randn(B, 5, D_MODEL, requires_grad=True)
    memory = torch.randn(B, K, D)
    memory[2] = math.nan
    out, _ = gca(h, memory)
    assert torch.equal(_bits(out), _bits(h.detach()))
    out, _ = gca(h, torch.randn(B, K, D))
    out.square().sum().backward()
    assert gca.gate.grad.shape == (D_MODEL,) and torch.count_nonzero(gca.gate.grad) == D_MODEL
    with torch.no_grad():  # one open channel changes that channel only
        gca.gate[3] = 0.5
        out, _ = gca(h, memory.nan_to_num())
    closed = [i for i in range(D_MODEL) if i != 3]
    assert torch.equal(_bits(out[..., closed]), _bits(h.detach()[..., closed]))
    assert not torch.equal(out[..., 3], h.detach()[..., 3])


def test_channel_gate_backward_matches_finite_differences() -> None:
    inputs = (
        torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True),
        torch.tensor([0.0, 0.2, -0.3, 0.1], dtype=torch.double, requires_grad=True),
        torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True),
    )
    assert torch.autograd.gradcheck(_GatedResidual.apply, inputs)


def test_gate_init_reads_memory_from_the_start_and_gives_up_do_no_harm() -> None:
    gca = GatedCrossAttention(D_MODEL, D, num_future=K, gate_init=0.1)
    assert gca.gate.item() == pytest.approx(0.1)
    assert gca.gate_strength().item() == pytest.approx(math.tanh(0.1))
    h = torch.randn(B, 5, D_MODEL)
    out, _ = gca(h, torch.randn(B, K, D))
    assert not torch.allclose(out, h)
    out.square().sum().backward()
    assert torch.count_nonzero(gca.attn.in_proj_weight.grad) > 0  # the attention learns at once
    with pytest.raises(ValueError, match="gate_type must be one of"):
        GatedCrossAttention(D_MODEL, D, num_future=K, gate_type="vector")


def test_channel_gate_logs_its_root_mean_square() -> None:
    module = _world_module(gate_type="channel")
    with torch.no_grad():
        module.cross_attn.gate.copy_(torch.linspace(-1.0, 1.0, D_MODEL))
    _, outputs = module(torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D))
    expected = torch.tanh(torch.linspace(-1.0, 1.0, D_MODEL)).square().mean().sqrt()
    assert outputs.gate.ndim == 0 and outputs.gate.item() == pytest.approx(expected.item())
    assert outputs.gate_raw.item() == pytest.approx(torch.linspace(-1.0, 1.0, D_MODEL).square().mean().sqrt().item())


def test_frozen_prophet_gets_no_gradient_and_still_reports_its_world_loss() -> None:
    module = _world_module()
    with torch.no_grad():
        module.cross_attn.gate.fill_(1.0)
    h_out, outputs = module(torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D), torch.randn(B, K, D), train_prophet=False)
    (h_out.square().sum() + outputs.world_loss).backward()
    assert all(p.grad is None for p in module.prophet.parameters())
    assert module.cross_attn.gate.grad is not None and outputs.world_loss.item() > 0


def test_prophet_forward_trains_the_prophet_alone() -> None:
    module = _world_module()
    outputs = module.prophet_forward(torch.randn(B, 4, D), torch.randn(B, K, D))
    outputs.world_loss.backward()
    assert all(p.grad is not None for p in module.prophet.parameters())
    assert all(p.grad is None for p in module.cross_attn.parameters())
    assert outputs.attn_mass is None and outputs.gate.item() == 0.0
    with pytest.raises(ValueError, match="needs the true future latents"):
        module.prophet_forward(torch.randn(B, 4, D), None)


def test_scheduled_source_without_a_schedule_is_an_error_in_training() -> None:
    schedule = MemorySourceSchedule("scheduled")
    with pytest.raises(ValueError, match="trains exactly as 'predicted': set memory_schedule_end"):
        schedule.oracle_fraction(0)


def test_other_reads_the_prediction_from_another_episodes_history() -> None:
    """Mode `other`: each sample reads the Prophet's prediction from a bank history drawn by its own generator, so
    an episode's memory comes from another episode and does not depend on its batch neighbours."""
    module = _world_module(gate_init=0.5).eval()
    bank, bank_mask = torch.randn(50, 4, D), torch.ones(50, 4, dtype=torch.bool)
    bank_mask[:, 0] = False  # a history padded at its episode's start
    h, z_history = torch.randn(B, 5, D_MODEL), torch.randn(B, 4, D)
    with pytest.raises(ValueError, match="has no memory bank: give it latent histories of other episodes"):
        module(h, z_history, mode="other", generator=[_gen(s) for s in range(B)])
    module.use_memory_bank(bank, bank_mask)
    memory = module._memory(MemoryMode.OTHER, module.prophet(z_history), None, [_gen(s) for s in range(B)])
    rows = [torch.randint(50, (1,), generator=_gen(s)).item() for s in range(B)]
    torch.testing.assert_close(memory, module.prophet(bank[rows], bank_mask[rows]))
    # Sample 2 alone, or beside other episodes: the same memory, so the same output.
    out, _ = module(h, z_history, mode="other", generator=[_gen(s) for s in range(B)])
    alone, _ = module(h[2:3], z_history[2:3], mode="other", generator=[_gen(2)])
    torch.testing.assert_close(out[2:3], alone)
    assert not torch.allclose(out, module(h, z_history, mode="pred")[0])
    prepared = module.prepare_memory(z_history, mode="other", generator=[_gen(s) for s in range(B)])
    torch.testing.assert_close(module.read_memory(h, prepared), out)
    with pytest.raises(ValueError, match="needs the world module's memory bank"):
        apply_memory_mode("other", torch.randn(B, K, D))
    with pytest.raises(ValueError, match=r"non-empty \[N, T, D\] history"):
        module.use_memory_bank(bank, bank_mask[:, :2])


def test_other_is_a_rollout_control_only() -> None:
    from lerobot_policy_world_modality.memory_modes import INTERVENTION_MODES, ROLLOUT_MODES
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WorldTransformerConfig

    assert "other" in ROLLOUT_MODES and "other" not in INTERVENTION_MODES
    with pytest.raises(ValueError, match="world_memory_mode_train 'other' is a rollout control"):
        WorldTransformerConfig(world_memory_mode_train="other")
