"""SmolVLA-world: LeRobot's SmolVLA whose action expert reads predicted world memory.

Everything of SmolVLA is LeRobot's own code (VLM prefix, action expert, flow matching, Euler
denoising, queues, processors); this module adds the project's `WorldModule` (Prophet over the
world-latent history + zero-initialised gated cross-attention) at one point.

Hook point: the output of ``VLAFlowMatching.embed_suffix``, i.e. the action-token query states that
enter the action expert (the fused noisy-action + timestep embedding of each of the H chunk steps).
Why there and not on the expert's output states before ``action_out_proj``:
- it is the one function both flow-matching paths call (``forward`` in training and ``denoise_step``
  at every step of ``sample_actions``), so overriding it alone puts the same injection into training
  and into every denoising step, without copying any of SmolVLA's forward code;
- the memory then passes through every expert layer, where the action tokens also attend to the VLM
  prefix, so the expert can relate predicted futures to what it sees; at the output the memory could
  only shift the final linear velocity read-out.
With the gate at exactly 0 the gated residual returns its input bit for bit (NaN memory included),
so the policy is LeRobot's SmolVLA with the same weights (tested). With ``use_world_module=False`` (E0) there
is no world module, no hook and no step counter: LeRobot's SmolVLA, parameter for parameter (tested).

Training calls the `WorldModule` as is (Prophet, memory mode / oracle schedule, world loss, injection).
Inference on CUDA replays each action chunk from one CUDA graph (`cuda_graphs`, default `chunk`; `GraphedStep`):
VLM prefix pass and the 10 denoising steps, the world memory read inside; the memory is prepared eagerly once per
chunk and the graph is captured once per batch size. `step` replays each denoising step instead (the prefix pass
eager). SmolVLM's vision tower is called through `FullGridVisionTransformer` (vision.py), the same numbers without
the GPU synchronisation that would forbid capturing the prefix.
Inference computes the memory once per action chunk (one Prophet pass; one draw for the `random` and
`shuffle` controls), projects it to attention keys and values once, and reads that same memory at every
denoising step (`WorldModule.prepare_memory` / `read_memory`: what `WorldModule.forward` computes in
eval mode, without recomputing the memory's projections at each step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from draccus.utils import ParsingError
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy, VLAFlowMatching
from torch import Tensor
from transformers import DynamicCache

from lerobot_policy_world_modality.common import ForgetsGraphs, GraphedStep, WorldMemoryPolicy, check_graph_scope
from lerobot_policy_world_modality.encoders import WorldEncoder, build_encoder
from lerobot_policy_world_modality.encoders.state import StateEncoder
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.families import check_backbone
from lerobot_policy_world_modality.smolvla_world.configuration_smolvla_world import (
    CUDA_GRAPH_SCOPES,
    SmolVLAWorldConfig,
)
from lerobot_policy_world_modality.smolvla_world.vision import use_full_grid_vision
from lerobot_policy_world_modality.world import (
    MemoryMode,
    PreparedMemory,
    WorldModule,
    WorldModuleConfig,
    scalars_to_floats,
)
from lerobot_policy_world_modality.world.history import (
    ROLLOUT_GENERATORS,
    WORLD_FUTURE,
    WORLD_FUTURE_MASK,
    WORLD_LATENTS,
    WORLD_LATENTS_MASK,
    LatentHistory,
    encoder_input,
    rollout_noise,
)

MemoryReader = Callable[[Tensor], Tensor]


class WorldFlowMatching(ForgetsGraphs, VLAFlowMatching):
    """SmolVLA's flow-matching model with the world module reading into the action-expert queries (SmolVLA's own
    without a world module)."""

    def __init__(self, config: SmolVLAWorldConfig, rtc_processor=None) -> None:
        super().__init__(config, rtc_processor=rtc_processor)
        self.world = (
            WorldModule(WorldModuleConfig.from_policy_config(config, self.vlm_with_expert.expert_hidden_size))
            if config.use_world_module
            else None
        )
        self._read_memory: MemoryReader | None = None
        # SmolVLA calls the vision tower without a patch mask: the path that does not synchronise (capturable).
        use_full_grid_vision(self.vlm_with_expert.get_vlm_model().vision_model)
        if config.compile_denoise_step:
            self.denoise_step = torch.compile(self.denoise_step)
        self.use_cuda_graphs(config.cuda_graphs)

    def use_cuda_graphs(self, scope: str) -> None:
        """Replay inference on CUDA from graphs of ``scope`` (`cuda_graphs`: chunk, step, off) from now on."""
        self.config.cuda_graphs = check_graph_scope(scope, CUDA_GRAPH_SCOPES)
        pieces = {"chunk": self._chunk_from_buffers, "step": self._step_from_buffers}
        compiled = self.config.compile_denoise_step
        self._graphed = GraphedStep(pieces[scope]) if scope in pieces and not compiled else None

    @contextmanager
    def reading_memory(self, reader: MemoryReader) -> Iterator[None]:
        """Within the block, every suffix embedding (training forward, each denoising step) goes
        through ``reader`` ([B, H, d_expert] -> same)."""
        previous, self._read_memory = self._read_memory, reader
        try:
            yield
        finally:
            self._read_memory = previous

    def _replays(self, scope: str, device: torch.device) -> bool:
        """Whether this inference call replays a CUDA graph of ``scope`` (`cuda_graphs`)."""
        return (
            self._graphed is not None
            and self.config.cuda_graphs == scope
            and not self.training
            and device.type == "cuda"
            and (self.world is None or isinstance(self._read_memory, _ChunkMemory))
        )

    def _memory_parts(self) -> tuple[Tensor | None, ...]:
        """The chunk's prepared memory as graph inputs (built eagerly: one Prophet pass, one draw for the controls)."""
        memory = None if self.world is None else self._read_memory.prepared()
        return PreparedMemory.as_inputs(memory)

    def _reading_parts(self, parts: tuple[Tensor | None, ...]):
        """Inside a captured call: the suffix embeddings read the memory made of the graph's buffers."""
        if self.world is None:
            return nullcontext()
        memory = PreparedMemory.from_inputs(parts)
        return self.reading_memory(lambda h: self.world.read_memory(h, memory))

    def sample_actions(self, images, img_masks, lang_tokens, lang_masks, state, noise=None, **kwargs):
        """SmolVLA's sampling (VLM prefix, then the Euler denoising steps); at inference on CUDA the whole chunk is
        replayed from one CUDA graph (`cuda_graphs="chunk"`)."""
        if not self._replays("chunk", state.device) or any(value is not None for value in kwargs.values()):
            return super().sample_actions(images, img_masks, lang_tokens, lang_masks, state, noise=noise, **kwargs)
        if noise is None:  # drawn as SmolVLA draws it, outside the graph
            noise = self.sample_noise(
                (state.shape[0], self.config.chunk_size, self.config.max_action_dim), state.device
            )
        parts = self._memory_parts()
        return self._graphed(*images, *img_masks, lang_tokens, lang_masks, state, noise, *parts, layout=len(images))

    def _chunk_from_buffers(self, *inputs, layout: int):
        """The chunk the graph captures: SmolVLA's sampling on the graph's buffers (``layout``: how many cameras)."""
        cameras = layout
        images, img_masks = list(inputs[:cameras]), list(inputs[cameras : 2 * cameras])
        lang_tokens, lang_masks, state, noise = inputs[2 * cameras : 2 * cameras + 4]
        with self._reading_parts(inputs[2 * cameras + 4 :]):
            return super().sample_actions(images, img_masks, lang_tokens, lang_masks, state, noise=noise)

    def denoise_step(self, prefix_pad_masks, past_key_values, x_t, timestep):
        """SmolVLA's denoising step; at inference on CUDA replayed from a CUDA graph (`cuda_graphs="step"`)."""
        if not self._replays("step", x_t.device) or not isinstance(past_key_values, DynamicCache):
            return super().denoise_step(prefix_pad_masks, past_key_values, x_t, timestep)
        cached = [tensor for layer in past_key_values.layers for tensor in (layer.keys, layer.values)]
        parts = self._memory_parts()
        return self._graphed(prefix_pad_masks, x_t, timestep, *parts, *cached, layout=past_key_values)

    def _step_from_buffers(
        self, prefix_pad_masks, x_t, timestep, keys, values, allowed, has_memory, *cached, layout: DynamicCache
    ):
        """The step the graph captures: SmolVLA's, on a prefix cache and a prepared memory made of the graph's
        buffers (a copy of the cache object ``layout``: the step appends to it and crops it back)."""
        cache = copy.copy(layout)
        cache.layers = [copy.copy(layer) for layer in layout.layers]
        for layer, layer_keys, layer_values in zip(cache.layers, cached[::2], cached[1::2], strict=True):
            layer.keys, layer.values = layer_keys, layer_values
        with self._reading_parts((keys, values, allowed, has_memory)):
            return super().denoise_step(prefix_pad_masks, cache, x_t, timestep)

    def embed_suffix(self, noisy_actions, timestep):
        embs, pad_masks, att_masks = super().embed_suffix(noisy_actions, timestep)
        if self.world is None:
            return embs, pad_masks, att_masks
        if self._read_memory is None:
            raise RuntimeError(
                "WorldFlowMatching was called outside `reading_memory`: go through "
                "SmolVLAWorldPolicy (forward / predict_action_chunk / select_action)"
            )
        return self._read_memory(embs), pad_masks, att_masks


class _ChunkMemory:
    """Inference memory reader: the memory is built and projected on the first denoising step of a
    chunk and read at every later step. Lazily, so a `select_action` call served from the action queue
    runs no Prophet."""

    def __init__(
        self,
        world: WorldModule,
        z_history: Tensor,
        history_mask: Tensor,
        z_future: Tensor | None,
        mode: MemoryMode,
        generators: list[torch.Generator] | None = None,
    ) -> None:
        self.world, self.z_history, self.history_mask, self.z_future, self.mode = (
            world,
            z_history,
            history_mask,
            z_future,
            mode,
        )
        self.generators = generators
        self.memory: PreparedMemory | None = None
        self.built = False

    def __call__(self, h: Tensor) -> Tensor:
        return self.world.read_memory(h, self.prepared())

    def prepared(self) -> PreparedMemory | None:
        """The chunk's memory, built on first use."""
        if not self.built:
            self._build()
        return self.memory

    @torch.compiler.disable  # a compiled denoising step only reads the memory; building it stays eager
    def _build(self) -> None:
        self.memory = self.world.prepare_memory(
            self.z_history, self.history_mask, self.z_future, self.mode, self.generators
        )
        self.built = True


class SmolVLAWorldPolicy(WorldMemoryPolicy, SmolVLAPolicy):
    """SmolVLA + world memory; LeRobot's `forward` / `select_action` / `predict_action_chunk` interface
    with an optional ``memory_mode`` override (the rollout ablations)."""

    config_class = SmolVLAWorldConfig
    name = "smolvla_world"

    def __init__(self, config: SmolVLAWorldConfig, **kwargs) -> None:
        # SmolVLAPolicy.__init__ with WorldFlowMatching in place of VLAFlowMatching (calling it and
        # replacing the model afterwards would build the VLM twice).
        PreTrainedPolicy.__init__(self, config)
        config.validate_features()
        # Before LeRobot builds the VLM: another family's config or a folder not here fails there without saying so.
        check_backbone("smolvla", config.vlm_model_name, "vlm_model_name")
        self.config = config
        self.init_rtc_processor()
        self.model = WorldFlowMatching(config, rtc_processor=self.rtc_processor)
        if config.use_world_module:  # without it, nothing beside SmolVLA's own state (E0 loads its weights as they are)
            self.register_step_counter()
            self.latent_history = LatentHistory(config.spec, config.history_len, config.latent_source_key)
        self._training_encoder: WorldEncoder | None = None
        self.reset()

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, **kwargs):
        try:
            return super().from_pretrained(pretrained_name_or_path, **kwargs)
        except ParsingError as error:
            # draccus wraps the config's own check (e.g. a temporal-window mismatch naming both
            # values) in a generic "Couldn't instantiate" error: raise the check's message itself.
            if isinstance(error.__cause__, ValueError):
                raise error.__cause__ from None
            raise

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        # A checkpoint missing world-module weights must not load as a silently re-initialised policy.
        return super()._load_as_safetensor(model, model_file, map_location, strict=True)

    @property
    def world_module(self) -> WorldModule | None:
        return self.model.world

    def use_cuda_graphs(self, scope: str) -> None:
        """What inference on CUDA replays from CUDA graphs from now on (`cuda_graphs`: chunk, step, off)."""
        self.model.use_cuda_graphs(scope)

    def compile_targets(self) -> list[torch.nn.Module]:
        """The vision tower and the VLM with its action expert (every layer of both, run as one stack)."""
        vlm_with_expert = self.model.vlm_with_expert
        return [vlm_with_expert.get_vlm_model().vision_model, vlm_with_expert]

    def optim_parameters(self) -> list:
        # As LeRobot's SmolVLA (all parameters, frozen ones included), so earlier runs' optimizer states load.
        return list(self.parameters())

    def reset(self) -> None:
        """Start new episodes: forget queued actions, the latent history and the encoder's frames."""
        super().reset()
        if self.config.use_world_module:
            self.latent_history.reset()

    # --- training -----------------------------------------------------------------------------

    def forward(
        self, batch: dict[str, Tensor], memory_mode: str | None = None, noise=None, time=None, reduction: str = "mean"
    ) -> tuple[Tensor, dict[str, float]]:
        """SmolVLA's flow-matching loss + lambda_world * the world loss; ``memory_mode`` overrides
        ``world_memory_mode_train`` (validation under controls). Without a world module: SmolVLA's loss."""
        if not self.config.use_world_module:
            return super().forward(batch, noise=noise, time=time, reduction=reduction)
        batch, z_hist, hist_mask, z_future, future_mask = self._world_inputs(batch)
        if self.in_prophet_stage():
            return self.prophet_stage_forward(z_hist, hist_mask, z_future, future_mask)
        step = self.train_step  # read only by a `scheduled` memory source
        world_outputs = []

        def read(h: Tensor) -> Tensor:
            h, world_out = self.model.world(
                h,
                z_hist,
                z_future,
                future_mask,
                mode=memory_mode,
                step=step,
                history_mask=hist_mask,
                train_prophet=self.trains_prophet,
            )
            world_outputs.append(world_out)
            return h

        with self.model.reading_memory(read):
            action_loss, logs = super().forward(batch, noise=noise, time=time, reduction=reduction)
        (world_out,) = world_outputs
        loss = self.world_loss_total(action_loss, world_out.world_loss)
        self.count_training_step()
        logs.update(scalars_to_floats(self.world_logs(world_out)))
        logs["action_loss"] = logs["loss"]
        logs["loss"] = loss.mean().item()
        return loss, logs

    # --- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_action_chunk(
        self, batch: dict[str, Tensor], memory_mode: str | None = None, noise: Tensor | None = None, **kwargs
    ) -> Tensor:
        """Normalised action chunk [B, H, A]; ``memory_mode`` defaults to ``world_memory_mode_rollout``."""
        with self._reading_world(batch, memory_mode) as batch:
            return super().predict_action_chunk(batch, noise=self._flow_noise(batch, noise), **kwargs)

    @torch.no_grad()
    def select_action(
        self, batch: dict[str, Tensor], memory_mode: str | None = None, noise: Tensor | None = None, **kwargs
    ) -> Tensor:
        """One action per call; every observation enters the latent history, a chunk is predicted
        when the queue of ``n_action_steps`` actions is empty."""
        with self._reading_world(batch, memory_mode) as batch:
            return super().select_action(batch, noise=self._flow_noise(batch, noise), **kwargs)

    @contextmanager
    def _reading_world(self, batch: dict[str, Tensor], memory_mode: str | None) -> Iterator[dict[str, Tensor]]:
        """The rollout batch with its latent history, and the chunk's memory read by every suffix embedding
        within the block; the batch as it is without a world module."""
        if not self.config.use_world_module:
            yield batch
            return
        batch = self.observe(batch)
        with self.model.reading_memory(self._chunk_memory(batch, memory_mode)):
            yield batch

    def observe(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the world-latent history to a rollout batch, encoding the current observation online
        with the checkpoint's encoder spec (unchanged when the batch already holds latents)."""
        return self.latent_history.observe(batch, self.model.action_in_proj.weight.device)

    def _flow_noise(self, batch: dict[str, Tensor], noise: Tensor | None) -> Tensor | None:
        """The chunk's initial flow noise: as given, else from the rollout's per-episode generators; None
        (SmolVLA draws it from the global RNG) without them."""
        if noise is not None or ROLLOUT_GENERATORS not in batch:
            return noise
        shape = (len(batch[ROLLOUT_GENERATORS]), self.config.chunk_size, self.config.max_action_dim)
        return rollout_noise(batch, shape, self.model.action_in_proj.weight.device)  # float32, as SmolVLA draws it

    def _chunk_memory(self, batch: dict[str, Tensor], memory_mode: str | None) -> _ChunkMemory:
        z_hist, hist_mask = self.history_latents(batch, self._world_dtype)
        mode = MemoryMode(memory_mode or self.config.world_memory_mode_rollout)
        return _ChunkMemory(
            self.model.world,
            z_hist,
            hist_mask,
            self.future_latents(batch, self._world_dtype)[0],
            mode,
            batch.get(ROLLOUT_GENERATORS),
        )

    # --- world latents ------------------------------------------------------------------------

    @property
    def _world_dtype(self) -> torch.dtype:
        return self.model.world.prophet.in_proj.weight.dtype

    def _world_inputs(self, batch: dict[str, Tensor]) -> tuple[dict, Tensor, Tensor, Tensor | None, Tensor | None]:
        """(batch at the current step, history, history mask, future latents, future mask): from
        the cached latents when the batch has them, else encoded from the frames that
        ``observation_delta_indices`` loaded (see the config docstring)."""
        if WORLD_LATENTS not in batch:
            batch = {**batch, **self._encode_frames(batch)}
        batch = self._current_step(batch)
        return batch, *self.history_latents(batch, self._world_dtype), *self.future_latents(batch, self._world_dtype)

    def _current_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Observations loaded at several offsets -> the one at offset 0 (what SmolVLA reads)."""
        offsets = self.config.online_frame_offsets
        current = offsets.index(0)
        out = dict(batch)
        for key in self.config.input_features:
            if f"{key}_is_pad" in batch:
                value = batch[key]
                if value.shape[1] != len(offsets):
                    raise InputError(
                        f"{key!r} holds {value.shape[1]} time steps, expected {len(offsets)} (offsets {offsets})"
                    )
                out[key] = value[:, current]
        return out

    @torch.no_grad()
    def _encode_frames(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """World latents of the T history and K future steps from frames at the config's offsets."""
        spec, key = self.config.spec, self.config.latent_source_key
        offsets = self.config.online_frame_offsets
        source, is_pad = batch.get(key), batch.get(f"{key}_is_pad")
        if source is None or is_pad is None or is_pad.shape[1] != len(offsets):
            raise KeyError(
                f"the batch has no cached world latents ({WORLD_LATENTS!r}) and no {key!r} frames at the offsets "
                f"{offsets} (with {key}_is_pad): train with `wm train` on a latent cache, or with a LeRobot dataset "
                f"loader that honours the config's observation_delta_indices; batch keys: {sorted(batch)}"
            )
        if self._training_encoder is None:
            self._training_encoder = build_encoder(spec, device=source.device)
        m, t, k = spec.temporal_window, self.config.history_len, self.config.num_future
        batch_size, steps = source.shape[:2]
        if isinstance(self._training_encoder, StateEncoder):
            z = self._training_encoder.encode_state(source.reshape(batch_size * steps, -1).float())
        else:
            frames = encoder_input(source.flatten(0, 1), is_state=False).unflatten(0, (batch_size, steps))
            windows = frames.unfold(1, m, 1).permute(0, 1, 5, 2, 3, 4)  # [B, T+K, m, H, W, 3]
            z = self._training_encoder.encode(windows.flatten(0, 1))
        # Stored as the cache stores it, so online and cached latents are the same numbers.
        z = spec.to_storage(z).float().reshape(batch_size, -1, z.shape[-1])
        real = ~is_pad[:, m - 1 :].bool()  # a latent is real when its own (last) frame is
        return {
            WORLD_LATENTS: z[:, :t],
            WORLD_LATENTS_MASK: real[:, :t],
            WORLD_FUTURE: z[:, t : t + k],
            WORLD_FUTURE_MASK: real[:, t : t + k],
        }
