"""Zero-initialised gated cross-attention from policy query states into world memory."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lerobot_policy_world_modality.errors import InputError


class _GatedResidual(torch.autograd.Function):
    """h + g * a, except that where g == 0 the output is h bit for bit (per channel for a per-channel g).

    Plain `h + 0 * a` is not enough: 0 * NaN = NaN, and `+0.0` turns `-0.0` into `+0.0`.
    A `torch.where` on its own would fix the value but also zero d/dg, freezing a zero-initialised
    gate forever; this function keeps the true gradient d/dg = sum(grad * a).
    """

    @staticmethod
    def forward(ctx, h: Tensor, g: Tensor, a: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(g, a)
        return torch.where(g == 0, h, h + g * a)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        g, a = ctx.saved_tensors
        # Summed to the gate's shape: a scalar, or one value per channel (the last dim).
        grad_g = (grad.float() * a.float()).sum_to_size(g.shape).to(g.dtype) if ctx.needs_input_grad[1] else None
        grad_a = grad * g if ctx.needs_input_grad[2] else None
        return grad, grad_g, grad_a


@dataclass(frozen=True)
class PreparedMemory:
    """Memory already projected to per-head attention keys and values, for reading it many times
    (each denoising step of one action chunk) without projecting it again."""

    keys: Tensor  # [B, heads, K, d_head]
    values: Tensor  # [B, heads, K, d_head]
    allowed: Tensor | None  # [B, 1, 1, K] bool, True where queries may attend; None: every slot
    has_memory: Tensor | None  # [B, 1, 1] bool, False for samples without any valid slot

    @staticmethod
    def as_inputs(memory: PreparedMemory | None) -> tuple[Tensor | None, ...]:
        """The memory as a fixed number (`MEMORY_INPUTS`) of tensors (all None for no memory): inputs of a CUDA
        graph."""
        if memory is None:
            return (None,) * MEMORY_INPUTS
        return tuple(getattr(memory, f.name) for f in dataclasses.fields(memory))

    @staticmethod
    def from_inputs(inputs: Sequence[Tensor | None]) -> PreparedMemory | None:
        """The memory `as_inputs` gave (None for no memory)."""
        return None if inputs[0] is None else PreparedMemory(*inputs)


MEMORY_INPUTS = len(dataclasses.fields(PreparedMemory))  # the tensors of `PreparedMemory.as_inputs`


GATE_TYPES = ("scalar", "channel")


class GatedCrossAttention(nn.Module):
    """out = h + tanh(gate) * attn(norm(h), memory), with `gate` initialised to `gate_init` (default 0).

    At initialisation (and whenever the gate is exactly 0) the policy is unchanged whatever the
    memory holds, NaN and inf included, so adding world memory can never hurt a pretrained policy
    before training has shown it is useful. The gate still receives gradient at 0 (for finite
    memory), while the attention parameters receive none until the gate has moved.

    `gate_type`: `scalar` (one gate) or `channel` (one gate per channel of d_model, each moving on
    its own). A non-zero `gate_init` lets the attention learn from the first step, but gives up the
    guarantee: only an exact zero leaves the policy bit for bit unchanged at initialisation.
    """

    def __init__(
        self,
        d_model: int,
        d_mem: int,
        num_future: int,
        num_heads: int = 4,
        dropout: float = 0.0,
        gate_type: str = "scalar",
        gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        if gate_type not in GATE_TYPES:
            raise InputError(f"gate_type must be one of {GATE_TYPES}, got {gate_type!r}")
        self.num_future = num_future
        self.query_norm = nn.LayerNorm(d_model)
        self.mem_norm = nn.LayerNorm(d_mem)
        self.mem_proj = nn.Linear(d_mem, d_model)
        # Tells the attention which future step each memory slot holds.
        self.future_emb = nn.Parameter(torch.randn(num_future, d_model) * 0.02)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.gate = nn.Parameter(torch.full((d_model,) if gate_type == "channel" else (), float(gate_init)))

    def gate_strength(self) -> Tensor:
        """How strongly the memory is read, detached: tanh(gate), or for a per-channel gate the root mean
        square of tanh(gate) over the channels."""
        gate = torch.tanh(self.gate.detach())
        return gate if gate.ndim == 0 else gate.square().mean().sqrt()

    def forward(self, h: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Read the memory into the query states.

        Args:
            h: [B, Q, d_model] query hidden states (action queries / <ACT_i> states).
            memory: [B, K, d_mem] future latents, slot k-1 holding z_{t+k}.
            memory_mask: optional [B, K] bool, True where the slot is valid. A sample with no valid
                slot gets no update (rather than NaN from an all-masked softmax).

        Returns:
            h_out [B, Q, d_model] and head-averaged attention weights [B, Q, K]
            (mean over batch and queries = attention mass per future step).
        """
        attended, weights = self._attend(h, self.prepare(memory, memory_mask), need_weights=True)
        return _GatedResidual.apply(h, torch.tanh(self.gate).to(h.dtype), attended), weights

    def prepare(self, memory: Tensor, memory_mask: Tensor | None = None) -> PreparedMemory:
        """Project `memory` to per-head keys and values once; `read` then costs only the queries'
        projection and one fused attention (the denoising steps of a chunk read one memory)."""
        k = memory.shape[1]
        if k > self.num_future:
            raise InputError(f"memory has {k} future slots but the module was built for {self.num_future}")
        allowed = has_memory = None
        if memory_mask is not None:
            valid = memory_mask.bool()
            # Padded slots may hold anything; a NaN there would leak through 0-weight attention.
            memory = torch.where(valid[..., None], memory, 0.0)
            has_memory = valid.any(dim=1)
            # Samples without any valid slot attend to all (finite softmax); their update is zeroed.
            allowed = (valid | ~has_memory[:, None])[:, None, None, :]
            has_memory = has_memory[:, None, None]
        slots = self.mem_proj(self.mem_norm(memory)) + self.future_emb[:k]
        _, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        _, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        return PreparedMemory(
            keys=self._heads(F.linear(slots, w_k, b_k)),
            values=self._heads(F.linear(slots, w_v, b_v)),
            allowed=allowed,
            has_memory=has_memory,
        )

    def read(self, h: Tensor, memory: PreparedMemory) -> Tensor:
        """`forward(h, memory, mask)[0]` for a prepared memory, without attention weights: the
        inference path."""
        attended, _ = self._attend(h, memory, need_weights=False)
        return _GatedResidual.apply(h, torch.tanh(self.gate).to(h.dtype), attended)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, d_model] -> [B, heads, L, d_head]."""
        return x.unflatten(-1, (self.attn.num_heads, -1)).transpose(1, 2)

    def _attend(self, h: Tensor, memory: PreparedMemory, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """Multi-head attention of the normalised queries over the prepared memory, with the
        parameters of ``self.attn`` (nn.MultiheadAttention's layout, so checkpoints keep their keys).
        Returns the attended values [B, Q, d_model] (zero for samples without memory) and, with
        ``need_weights``, the head-averaged weights [B, Q, K]."""
        w_q, _, _ = self.attn.in_proj_weight.chunk(3)
        b_q, _, _ = self.attn.in_proj_bias.chunk(3)
        queries = self._heads(F.linear(self.query_norm(h), w_q, b_q))
        keys, values = memory.keys.to(queries.dtype), memory.values.to(queries.dtype)
        dropout = self.attn.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
            if memory.allowed is not None:
                scores = scores.masked_fill(~memory.allowed, float("-inf"))
            probs = scores.softmax(dim=-1)
            attended = F.dropout(probs, dropout, self.training) @ values
            weights = probs.mean(dim=1)
        else:
            attended = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=memory.allowed, dropout_p=dropout
            )
        attended = self.attn.out_proj(attended.transpose(1, 2).flatten(2))
        if memory.has_memory is not None:
            attended = attended * memory.has_memory
            weights = None if weights is None else weights * memory.has_memory
        return attended, weights
