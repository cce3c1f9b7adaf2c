"""WorldModule: Prophet + memory mode/source + gated cross-attention, as every policy uses them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.world.gated_cross_attention import GatedCrossAttention, PreparedMemory
from lerobot_policy_world_modality.world.losses import world_cosine_loss
from lerobot_policy_world_modality.world.memory import MemoryMode, MemorySourceSchedule, apply_memory_mode
from lerobot_policy_world_modality.world.prophet import Prophet, ProphetConfig


@dataclass
class WorldModuleConfig:
    """Everything that shapes the world module; `d_model` is the policy's query-state width."""

    latent_dim: int
    d_model: int
    num_future: int = 4
    history_len: int = 4
    delta: bool = False
    prophet_dim: int = 256
    prophet_heads: int = 4
    prophet_layers: int = 2
    cross_attn_heads: int = 4
    gate_type: str = "scalar"  # scalar | channel (GatedCrossAttention)
    gate_init: float = 0.0  # only 0 keeps the bit-identical do-no-harm guarantee
    dropout: float = 0.0
    memory_mode: MemoryMode = MemoryMode.PRED
    memory_source: MemorySourceSchedule = field(default_factory=MemorySourceSchedule)
    # False: the action loss also trains the Prophet (end to end; the world loss anchors it to
    # real futures). True: the Prophet learns from the world loss only, so the memory stays a
    # pure forecast and cannot drift into an action-specific code.
    detach_prophet_for_policy: bool = False

    def __post_init__(self) -> None:
        self.memory_mode = MemoryMode(self.memory_mode)

    @classmethod
    def from_policy_config(cls, config, d_model: int, dropout: float = 0.0) -> WorldModuleConfig:
        """From a policy config of any family: they all name the world-module fields the same way."""
        return cls(
            latent_dim=config.latent_dim,
            d_model=d_model,
            num_future=config.num_future,
            history_len=config.history_len,
            delta=config.prophet_delta,
            prophet_dim=config.prophet_dim,
            prophet_heads=config.prophet_heads,
            prophet_layers=config.prophet_layers,
            cross_attn_heads=config.cross_attn_heads,
            gate_type=config.gate_type,
            gate_init=config.gate_init,
            dropout=dropout,
            memory_mode=MemoryMode(config.world_memory_mode_train),
            memory_source=MemorySourceSchedule(
                config.memory_source, config.memory_schedule_start, config.memory_schedule_end
            ),
            detach_prophet_for_policy=config.detach_prophet_for_policy,
        )

    def prophet_config(self) -> ProphetConfig:
        return ProphetConfig(
            latent_dim=self.latent_dim,
            num_future=self.num_future,
            history_len=self.history_len,
            d_model=self.prophet_dim,
            num_heads=self.prophet_heads,
            num_layers=self.prophet_layers,
            dropout=self.dropout,
            delta=self.delta,
        )


@dataclass
class WorldOutputs:
    """What one forward of the world module produced; `log_dict` gives a trainer's scalars."""

    z_pred: Tensor  # [B, K, D_latent]
    memory_mode: MemoryMode
    gate_raw: Tensor  # scalar, detached (a per-channel gate: the root mean square of its values)
    gate: Tensor  # tanh(gate_raw), detached (a per-channel gate: GatedCrossAttention.gate_strength)
    oracle_fraction: float  # realised share of samples whose memory was the oracle
    attn_mass: Tensor | None = None  # [K]; None when the injection was skipped
    world_loss: Tensor | None = None  # scalar with grad; None without z_future
    world_loss_per_k: Tensor | None = None  # [K]

    def log_tensors(self) -> dict[str, Tensor | float]:
        """Flat scalars (detached 0-d tensors or floats), future steps numbered k = 1..K as in z_{t+k};
        turn them into floats together with the policy's own (`scalars_to_floats`: one wait for the GPU)."""
        logs: dict[str, Tensor | float] = {
            "world_gate_raw": self.gate_raw,
            "world_gate": self.gate,
            "world_oracle_fraction": self.oracle_fraction,
        }
        if self.world_loss is not None:
            logs["world_loss"] = self.world_loss.detach()
        for name, values in (("world_loss_k", self.world_loss_per_k), ("world_attn_mass_k", self.attn_mass)):
            if values is not None:
                logs |= {f"{name}{k}": value for k, value in enumerate(values.detach(), start=1)}
        return logs

    def log_dict(self) -> dict[str, float]:
        """`log_tensors` as floats."""
        return scalars_to_floats(self.log_tensors())


def scalars_to_floats(scalars: dict[str, Tensor | float]) -> dict[str, float]:
    """0-d tensors (on one device) and floats -> floats, the tensors with a single device-to-host copy:
    each `.item()` would make the host wait for the GPU, and a launch-bound training step pays for
    every wait."""
    tensors = {name: value for name, value in scalars.items() if isinstance(value, Tensor)}
    values = torch.stack([t.detach().double() for t in tensors.values()]).tolist() if tensors else []
    floats = dict(zip(tensors, values))
    return {name: floats[name] if name in floats else float(value) for name, value in scalars.items()}


class WorldModule(nn.Module):
    """Predicts future latents from a latent history and reads them into policy query states."""

    def __init__(self, config: WorldModuleConfig) -> None:
        super().__init__()
        self.config = config
        self.prophet = Prophet(config.prophet_config())
        self.cross_attn = GatedCrossAttention(
            d_model=config.d_model,
            d_mem=config.latent_dim,
            num_future=config.num_future,
            num_heads=config.cross_attn_heads,
            dropout=config.dropout,
            gate_type=config.gate_type,
            gate_init=config.gate_init,
        )
        # Latent histories of other episodes for memory mode `other`, and the Prophet's predictions for them
        # (`use_memory_bank`); not saved with the weights.
        self.memory_bank: tuple[Tensor, Tensor] | None = None
        self._bank_memory: Tensor | None = None

    @torch.no_grad()
    def use_memory_bank(self, z_history: Tensor, history_mask: Tensor) -> None:
        """Latent histories [N, T, D] (mask [N, T], True where real) of frames of other episodes: memory mode
        `other` reads the Prophet's prediction for one of them, drawn per sample, in place of the sample's own.
        The predictions are made here, once, by the Prophet as it stands (at rollout its weights are frozen)."""
        if z_history.ndim != 3 or history_mask.shape != z_history.shape[:2] or len(z_history) == 0:
            raise InputError(
                f"a memory bank is a non-empty [N, T, D] history with an [N, T] mask; got "
                f"{tuple(z_history.shape)} and {tuple(history_mask.shape)}"
            )
        self.memory_bank = (z_history, history_mask.bool())
        training = self.prophet.training
        self._bank_memory = self.prophet.eval()(z_history, history_mask.bool())
        self.prophet.train(training)

    def _memory(
        self,
        mode: MemoryMode,
        predicted: Tensor,
        z_future: Tensor | None,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> Tensor | None:
        """What the policy reads under ``mode`` (`apply_memory_mode`, with this module's memory bank)."""
        return apply_memory_mode(mode, predicted, z_future, generator, self._bank_memory)

    def forward(
        self,
        h: Tensor,
        z_history: Tensor,
        z_future: Tensor | None = None,
        future_mask: Tensor | None = None,
        mode: MemoryMode | str | None = None,
        step: int | Tensor | None = None,
        *,
        history_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        train_prophet: bool = True,
    ) -> tuple[Tensor, WorldOutputs]:
        """Run the Prophet, build the memory and inject it into `h`.

        Args:
            h: [B, Q, d_model] policy query states.
            z_history: [B, T, latent_dim] latent history ending at z_t.
            z_future: [B, K, latent_dim] true z_{t+1..t+K}: enables the world loss, `oracle` mode
                and oracle substitution in training.
            future_mask: [B, K] bool, True where the future exists; masks the world loss only.
                The memory is not masked by it, since that would tell the policy where the
                episode ends, which it cannot know at rollout; pass `memory_mask` explicitly
                when that is intended.
            mode: memory mode; None means `config.memory_mode`.
            step: training step (int or a step-counter tensor), needed by a `scheduled` memory source.
            train_prophet: False freezes the Prophet (no gradient reaches it; its world loss is
                still computed, without gradient): the second stage of two-stage training.
            generator: the draws of `random` / `shuffle` (and of a scheduled source); a sequence of B
                generators applies the mode per sample (`apply_memory_mode`).

        In training mode the `pred` memory comes from `config.memory_source` (oracle latents
        substituted per sample by the schedule); in eval mode it is the Prophet's prediction.
        Other modes behave the same in both.
        """
        mode = self.config.memory_mode if mode is None else MemoryMode(mode)
        with torch.set_grad_enabled(train_prophet and torch.is_grad_enabled()):
            z_pred = self.prophet(z_history, history_mask)
        world_loss = world_loss_per_k = None
        if z_future is not None:
            world_loss, world_loss_per_k = world_cosine_loss(z_pred, z_future, future_mask)

        predicted = z_pred.detach() if self.config.detach_prophet_for_policy else z_pred
        oracle_fraction = 1.0 if mode is MemoryMode.ORACLE else 0.0
        if self.training and mode is MemoryMode.PRED:
            predicted, oracle_fraction = self.config.memory_source.mix(predicted, z_future, step, generator)
        memory = self._memory(mode, predicted, z_future, generator)

        attn_mass = None
        h_out = h
        if memory is not None:
            h_out, weights = self.cross_attn(h, memory, memory_mask)
            attn_mass = weights.detach().float().mean(dim=(0, 1))
        return h_out, self._outputs(z_pred, mode, oracle_fraction, attn_mass, world_loss, world_loss_per_k)

    def prophet_forward(
        self,
        z_history: Tensor,
        z_future: Tensor,
        future_mask: Tensor | None = None,
        *,
        history_mask: Tensor | None = None,
    ) -> WorldOutputs:
        """The Prophet alone on the world loss (the first stage of two-stage training): no memory is
        read, so nothing but the Prophet receives gradient."""
        if z_future is None:
            raise InputError(
                "training the Prophet alone (prophet_pretrain_steps) needs the true future latents "
                "(observation.world_future): train on a latent cache (`wm train`, or "
                "--policy.latents_path under lerobot-train)"
            )
        z_pred = self.prophet(z_history, history_mask)
        world_loss, world_loss_per_k = world_cosine_loss(z_pred, z_future, future_mask)
        return self._outputs(z_pred, MemoryMode.PRED, 0.0, None, world_loss, world_loss_per_k)

    def _outputs(
        self,
        z_pred: Tensor,
        mode: MemoryMode,
        oracle_fraction: float,
        attn_mass: Tensor | None,
        world_loss: Tensor | None,
        world_loss_per_k: Tensor | None,
    ) -> WorldOutputs:
        gate = self.cross_attn.gate.detach()
        # A copy, not a view: the optimizer updates the parameter in place before logging.
        gate_raw = gate.clone() if gate.ndim == 0 else gate.square().mean().sqrt()
        return WorldOutputs(
            z_pred=z_pred,
            memory_mode=mode,
            gate_raw=gate_raw,
            gate=self.cross_attn.gate_strength(),
            oracle_fraction=oracle_fraction,
            attn_mass=attn_mass,
            world_loss=world_loss,
            world_loss_per_k=world_loss_per_k,
        )

    @torch.no_grad()
    def prepare_memory(
        self,
        z_history: Tensor,
        history_mask: Tensor | None = None,
        z_future: Tensor | None = None,
        mode: MemoryMode | str | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> PreparedMemory | None:
        """Inference: the memory `forward` reads in eval mode (one Prophet pass; one draw for the
        `random` and `shuffle` controls), projected once for any number of `read_memory` calls;
        None for mode `none` (no injection)."""
        mode = self.config.memory_mode if mode is None else MemoryMode(mode)
        z_pred = self.prophet(z_history, history_mask)
        z_future = None if z_future is None else z_future.to(z_pred.dtype)
        memory = self._memory(mode, z_pred, z_future, generator)
        return None if memory is None else self.cross_attn.prepare(memory)

    def read_memory(self, h: Tensor, memory: PreparedMemory | None) -> Tensor:
        """`h` with the prepared memory read in (unchanged for None)."""
        return h if memory is None else self.cross_attn.read(h, memory)
