"""CUDA-graph replay of a piece of inference: an action chunk or one denoising step (docs/ARCHITECTURE.md, Fast
inference).

At batch 1 a VLA's action chunk is thousands of small kernels, each launched from Python, so the GPU mostly waits
for the host. `GraphedStep` captures the piece once per input signature and then launches all of its kernels with
one replay.

Captured code must not copy from host memory: the copy synchronises the stream, which capture forbids. The tensors
a step makes from host data (`torch.tensor` of Python values such as an attention-mask pattern, a CPU tensor moved
to the GPU) depend only on the shapes, so `HostConstants` records them on the device during a warm-up run and hands
the recorded tensors back, in the same order, while the capture runs; other host data at capture is an error. Every
replay then uses the recorded values: data that changes from call to call must enter as an input, on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from lerobot_policy_world_modality.errors import InputError

_FACTORIES = (torch.tensor, torch.as_tensor)
_MOVES = (Tensor.to, Tensor.cuda)


def check_graph_scope(scope: str, scopes: tuple[str, ...]) -> str:
    """``scope`` when it is one of a policy family's ``scopes`` of its `cuda_graphs` option."""
    if scope not in scopes:
        raise InputError(f"cuda_graphs must be one of {scopes}, got {scope!r}")
    return scope


def _target_device(func: Callable, args: tuple, kwargs: dict) -> torch.device | None:
    """The device a factory or move call puts its result on, when it names one."""
    if func in _FACTORIES:
        device = kwargs.get("device")
        return None if device is None else torch.device(device)
    if func is Tensor.cuda:
        return torch.device("cuda")
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
        if isinstance(value, Tensor):
            return value.device
    return None


class HostConstants(TorchFunctionMode):
    """Within the block, host data that becomes a tensor on a ``device_type`` device is recorded (``replay=False``)
    or served from the record in call order (``replay=True``), checking that the host data are the same."""

    def __init__(self, record: list[tuple[Any, Tensor]], replay: bool, device_type: str = "cuda") -> None:
        super().__init__()
        self.record, self.replay, self.device_type = record, replay, device_type
        self.position = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        host = self._host_data(func, args, kwargs)
        if host is None:
            return func(*args, **kwargs)
        if not self.replay:
            result = func(*args, **kwargs)
            self.record.append((host, result))
            return result
        if self.position >= len(self.record):
            raise RuntimeError(f"{func.__name__}: the captured step makes more host constants than its warm-up run")
        recorded, result = self.record[self.position]
        self.position += 1
        if not _same(host, recorded):
            raise RuntimeError(
                f"{func.__name__} got other host data at capture than in the warm-up run: the step depends on "
                "values, not only on shapes, and cannot be replayed from a CUDA graph"
            )
        return result

    def _host_data(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A copy of the host data a call would move onto the device; None for any other call."""
        if func not in _FACTORIES and func not in _MOVES:
            return None
        device = _target_device(func, args, kwargs)
        if device is None or device.type != self.device_type:
            return None
        data = args[0] if args else kwargs.get("data")
        if isinstance(data, Tensor):
            if data.device.type == self.device_type and func in _MOVES:
                return None  # already there: no host copy
            return data.detach().to("cpu", copy=True)
        return (repr(data), kwargs.get("dtype"))

    def check_complete(self) -> None:
        if self.replay and self.position != len(self.record):
            raise RuntimeError(
                f"the captured step made {self.position} host constants, its warm-up run {len(self.record)}"
            )


def _same(host: Any, recorded: Any) -> bool:
    if isinstance(host, Tensor) != isinstance(recorded, Tensor):
        return False
    if isinstance(host, Tensor):
        return host.dtype == recorded.dtype and host.shape == recorded.shape and torch.equal(host, recorded)
    return host == recorded


def _autocast_state() -> tuple[bool, torch.dtype | None]:
    """Whether CUDA autocast is on, and its dtype when it is (a disabled autocast block still sets a dtype, which
    changes nothing the graph computes)."""
    enabled = torch.is_autocast_enabled("cuda")
    return enabled, torch.get_autocast_dtype("cuda") if enabled else None


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor | None]  # the static buffers the graph reads
    output: Tensor  # the buffer the graph writes
    constants: list[tuple[Any, Tensor]]  # kept alive: the graph reads them
    # The previous call's inputs, held so that their memory is not reused while they are compared by identity.
    last: list[Tensor | None] = field(default_factory=list)


class GraphedStep:
    """``fn(*inputs) -> Tensor`` replayed from a CUDA graph captured on the first call of each input signature
    (shapes, dtypes, devices, which inputs are None, the autocast state).

    Each call copies its inputs into the graph's buffers, except an input that is the very tensor of the previous
    call (a KV cache or a prepared memory shared by the denoising steps of a chunk), replays the graph and returns a
    copy of its output. ``fn`` must compute on the GPU only (no `.item()`, no data-dependent shapes) and keep no
    state between calls; inside it autocast casts each weight once per run (its cache starts and ends empty).
    ``layout``: what ``fn`` needs beside the tensors to rebuild its arguments (how many cameras, the structure of a
    cache), given to it as ``layout=`` when it is captured; it must follow from the signature and ``key`` (hashable:
    what else tells graphs apart, e.g. an image grid that the inputs' shapes do not fix)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self._graphs: dict[tuple, _Captured] = {}

    def clear(self) -> None:
        """Forget every graph (the weights they read have moved)."""
        self._graphs.clear()

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __call__(self, *inputs: Tensor | None, layout: Any = None, key: Any = None) -> Tensor:
        signature = (
            tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs),
            _autocast_state(),
            key,
        )
        captured = self._graphs.get(signature)
        if captured is None:
            fn = self.fn if layout is None else partial(self.fn, layout=layout)
            captured = self._graphs[signature] = self._capture(fn, inputs)
        else:
            for buffer, previous, new in zip(captured.inputs, captured.last, inputs, strict=True):
                if new is not None and new is not previous:
                    buffer.copy_(new)
        captured.last = list(inputs)
        captured.graph.replay()
        return captured.output.clone()

    @staticmethod
    def _run(
        fn: Callable[..., Tensor], inputs: Sequence[Tensor | None], record: list, replay: bool
    ) -> tuple[Tensor, HostConstants]:
        enabled, dtype = _autocast_state()
        constants = HostConstants(record, replay=replay)
        # Autocast's weight-cast cache, emptied before and after the run: a weight read at every denoising step is
        # cast once per replay, into memory of the graph's own pool, and no cast made outside the run is read by it.
        torch.clear_autocast_cache()
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=True), constants:
                output = fn(*inputs)
        finally:
            torch.clear_autocast_cache()
        return output, constants

    def _capture(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor | None]) -> _Captured:
        buffers = [None if t is None else t.clone() for t in inputs]
        record: list[tuple[Any, Tensor]] = []
        # Warm-up on a side stream (lazy initialisations, library handles, the host constants), as torch advises.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(fn, buffers, record, replay=False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output, constants = self._run(fn, buffers, record, replay=True)
        constants.check_complete()
        return _Captured(graph, buffers, output, record, last=list(inputs))


class ForgetsGraphs:
    """`nn.Module` mixin for a module whose ``_graphed`` (a `GraphedStep`, or None) replays its inference: moving or
    casting the weights (``.to``, ``.cuda``, ``.half``) would leave the graphs reading their old memory, so they are
    forgotten."""

    def _apply(self, fn, *args, **kwargs):
        graphed = self.__dict__.get("_graphed")
        if graphed is not None:
            graphed.clear()
        return super()._apply(fn, *args, **kwargs)
