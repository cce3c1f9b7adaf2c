"""Applying the world-memory modes (what the policy reads) and the training-time memory source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.memory_modes import MemoryMode, MemorySource

_DRAWING_MODES = (MemoryMode.RANDOM, MemoryMode.SHUFFLE, MemoryMode.OTHER)


def _rng_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    """Draw where the generator lives (a CPU generator may drive CUDA tensors)."""
    return generator.device if generator is not None else fallback


def _check_oracle(oracle: Tensor | None, predicted: Tensor, needed_by: str) -> Tensor:
    if oracle is None:
        raise InputError(f"{needed_by} needs the true future latents (z_future), got None")
    if oracle.shape != predicted.shape:
        raise InputError(
            f"{needed_by}: oracle latents have shape {tuple(oracle.shape)}, "
            f"predicted memory has {tuple(predicted.shape)}"
        )
    return oracle.to(predicted.dtype)


def _cyclic_derangement(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Random single-cycle permutation: index[i] != i for every i, unlike a plain randperm."""
    order = torch.randperm(n, generator=generator, device=_rng_device(generator, device))
    index = torch.empty_like(order)
    index[order] = order.roll(-1)
    return index.to(device)


def apply_memory_mode(
    mode: MemoryMode | str,
    predicted: Tensor,
    oracle: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    bank: Tensor | None = None,
) -> Tensor | None:
    """Turn the predicted memory [B, K, D] into what the policy reads under `mode`.

    `generator` is one generator for the whole batch, or a sequence of B generators (rollouts: one per
    episode): then each sample gets the mode on its own, as at batch size 1, drawing from its generator.

    - `random`: N(mean, std) with mean and (population) std per feature dim, taken over batch and
      K of the detached prediction; the noise carries no gradient. A single vector (B == K == 1) gives
      one mean and std over its features instead.
    - `shuffle`: each sample gets another sample's memory (a random derangement of the batch).
      With batch size 1 the K future slots are deranged instead (each slot gets another step's
      prediction); with B == K == 1 there is nothing to shuffle and it raises.
    - `oracle`: returns `oracle` (cast to the prediction's dtype); raises if it is None.
    - `other`: each sample gets one of ``bank`` [N, K, D], the predictions for other episodes' histories
      (`WorldModule.use_memory_bank`), drawn from its generator; raises without a bank.
    - `none`: returns None, meaning the injection is skipped.
    """
    mode = MemoryMode(mode)
    if generator is not None and not isinstance(generator, torch.Generator) and mode in _DRAWING_MODES:
        generators = list(generator)
        if len(generators) != predicted.shape[0]:
            raise ValueError(f"{len(generators)} memory generators for a batch of {predicted.shape[0]}")
        return torch.cat(
            [apply_memory_mode(mode, predicted[i : i + 1], None, g, bank) for i, g in enumerate(generators)]
        )
    match mode:
        case MemoryMode.PRED:
            return predicted
        case MemoryMode.ZERO:
            return torch.zeros_like(predicted)
        case MemoryMode.RANDOM:
            stats = predicted.detach().float()
            # One memory vector (a rollout's episode with K == 1) has no spread per feature: noise with its own
            # mean and zero std would be the prediction itself, and the control would not be one.
            over = (0, 1) if predicted.shape[0] * predicted.shape[1] > 1 else (0, 1, 2)
            mean = stats.mean(dim=over, keepdim=True)
            std = stats.std(dim=over, keepdim=True, correction=0)
            noise = torch.randn(predicted.shape, generator=generator, device=_rng_device(generator, predicted.device))
            return (mean + std * noise.to(predicted.device)).to(predicted.dtype)
        case MemoryMode.SIGNFLIP:
            return -predicted
        case MemoryMode.SHUFFLE:
            batch, k = predicted.shape[:2]
            if batch > 1:
                return predicted[_cyclic_derangement(batch, generator, predicted.device)]
            if k > 1:
                return predicted[:, _cyclic_derangement(k, generator, predicted.device)]
            raise InputError("memory mode 'shuffle' needs batch size > 1 or more than one future step; got B == K == 1")
        case MemoryMode.ORACLE:
            return _check_oracle(oracle, predicted, "memory mode 'oracle'")
        case MemoryMode.NONE:
            return None
        case MemoryMode.OTHER:
            if bank is None:
                raise InputError(
                    "memory mode 'other' reads another episode's memory, so it needs the world module's "
                    "memory bank, and it has no memory bank: give it latent histories of other episodes "
                    "first (`WorldModule.use_memory_bank`; `wm eval --memory-mode other` takes them from "
                    "the checkpoint's held-out episodes, or --memory-bank LATENTS)"
                )
            rows = torch.randint(
                len(bank),
                (predicted.shape[0],),
                generator=generator,
                device=_rng_device(generator, torch.device("cpu")),
            )
            return bank[rows.to(bank.device)].to(predicted.device, predicted.dtype)


@dataclass
class MemorySourceSchedule:
    """Training-time source of the `pred` memory: the Prophet's output, the oracle, or a schedule.

    Oracle futures early on let the policy learn to read the memory before the Prophet is good;
    `scheduled` then anneals (oracle fraction 1 until `schedule_start_step`, linearly to 0 at
    `schedule_end_step`) so training ends on what the policy will see at rollout.
    """

    source: MemorySource = MemorySource.PREDICTED
    schedule_start_step: int = 0
    schedule_end_step: int = 0

    def __post_init__(self) -> None:
        self.source = MemorySource(self.source)
        if self.schedule_end_step < self.schedule_start_step:
            raise InputError(
                f"schedule_end_step {self.schedule_end_step} is before schedule_start_step {self.schedule_start_step}"
            )

    def oracle_fraction(self, step: int | Tensor | None) -> float:
        """Probability that a sample's memory is the oracle at `step` (an int, or a policy's step
        counter buffer: read only here, for `scheduled`, since reading a GPU tensor waits for the GPU)."""
        if self.source is MemorySource.PREDICTED:
            return 0.0
        if self.source is MemorySource.ORACLE:
            return 1.0
        if step is None:
            raise InputError("memory source 'scheduled' needs the training step")
        start, end = self.schedule_start_step, self.schedule_end_step
        if end == 0:
            raise InputError(
                "memory source 'scheduled' with memory_schedule_end 0 anneals over no steps and trains "
                "exactly as 'predicted': set memory_schedule_end, the step where the oracle fraction "
                "reaches 0 (`wm train` sets it to half of --steps when it is left at 0)"
            )
        step = int(step)
        if step <= start:
            return 1.0
        if step >= end:
            return 0.0
        return 1.0 - (step - start) / (end - start)

    def mix(
        self,
        predicted: Tensor,
        oracle: Tensor | None,
        step: int | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, float]:
        """Per sample, use the oracle with probability `oracle_fraction(step)`, else the prediction.

        Returns the mixed memory and the realised oracle fraction (for logging). `oracle` may be
        None while the fraction is 0.
        """
        fraction = self.oracle_fraction(step)
        if fraction == 0.0:
            return predicted, 0.0
        oracle = _check_oracle(oracle, predicted, f"memory source {self.source.value!r}")
        if fraction == 1.0:
            return oracle, 1.0
        draw = torch.rand(predicted.shape[0], generator=generator, device=_rng_device(generator, predicted.device))
        use_oracle = (draw < fraction).to(predicted.device)
        mixed = torch.where(use_oracle[:, None, None], oracle, predicted)
        return mixed, use_oracle.float().mean().item()
