"""F+: a Qwen-VL backbone read at `<ACT_i>` tokens, with world memory and a chain-of-causation text loss.

One forward pass of the VLM over `<image> <instruction> <ACT_0> ... <ACT_{H-1}>` (prompt.py) gives
the last-layer hidden states at the `<ACT_i>` positions; they receive the state (optional,
zero-initialised gated residual) and the world memory (the shared `WorldModule`, unchanged), then an
action head. Batches are left-padded, so the `<ACT_i>` tokens are the last H prompt tokens of
every sample.

Chain-of-causation (CoC) text: ``joint_after_act`` appends each sample's CoC tokens after its
`<ACT_i>` tokens in the same sequence, always ``coc_max_tokens`` of them (padded), so the action
part of the computation has the same shapes whatever the text is and causal attention keeps the
text out of it bit for bit; ``separate`` runs a second forward pass (the prompt without `<ACT_i>`
tokens, then the text).

Checkpoints hold the config (backbone name, folder fingerprint, prompt format and version, `<ACT_i>`
ids, keys, encoder spec), ``model.safetensors`` (heads, proprio gate, world module) and
``backbone_adapter/`` (the peft adapter: LoRA on the language model's q/k/v/o and the trained
`<ACT_i>` embedding rows). Loading checks each part; nothing is silently initialised at random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lerobot.policies.pretrained import PreTrainedPolicy
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from lerobot_policy_world_modality.common import (
    ActionHeads,
    CachedTokenizer,
    ForgetsGraphs,
    GraphedStep,
    QueuedActions,
    WorldMemoryPolicy,
    check_graph_scope,
)
from lerobot_policy_world_modality.encoders import EncoderSpec, OnlineEncoder
from lerobot_policy_world_modality.encoders.spec import digest
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.qwen_vla_world.configuration_qwen_vla_world import (
    CUDA_GRAPH_SCOPES,
    QwenVLAWorldConfig,
)
from lerobot_policy_world_modality.qwen_vla_world.prompt import (
    TEXT_END,
    act_tokens,
    build_prompt,
)
from lerobot_policy_world_modality.qwen_vla_world.prompt_layout import (
    PromptLayout,
    layout_forward,
    prompt_layout,
    use_positional_deepstack,
)
from lerobot_policy_world_modality.world import PreparedMemory, WorldModule, WorldModuleConfig, scalars_to_floats
from lerobot_policy_world_modality.world.gated_cross_attention import MEMORY_INPUTS
from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS, WORLD_LATENTS, LatentHistory, encoder_input

ADAPTER_DIR = "backbone_adapter"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"  # finetune='full': every backbone weight (the folder's are the untrained ones)
# LoRA only on the language model's attention projections (the vision tower has fused qkv/proj).
LORA_TARGETS = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
IGNORE_INDEX = -100
MAX_LAYOUTS = 256  # prompt layouts a policy remembers (an evaluation has one per task and batch composition)


def backbone_fingerprint(folder: Path) -> str:
    """Digest of a backbone folder's config and weight files (names and sizes: cheap, and enough to
    tell another checkpoint or another size apart)."""
    weights = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    return digest({"config": json.loads((folder / "config.json").read_text()), "weights": weights})


def load_backbone(config: QwenVLAWorldConfig) -> tuple[nn.Module, Any]:
    """The peft-wrapped Qwen-VL model and its processor (with the `<ACT_i>` tokens added).

    Fills ``config.backbone_fingerprint`` and ``config.act_token_ids`` on first use; a config that
    already holds them (a checkpoint's) must match the folder, or this raises naming both values.
    """
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model
    from transformers import (
        AddedToken,
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    folder = Path(config.backbone_path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingFileError(
            f"backbone_path {folder} has no config.json; it must be a local folder holding "
            f"{config.backbone_hub_id} (nothing is downloaded)"
        )
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if hf_config.model_type != config.backbone_model_type:
        raise InputError(
            f"backbone {config.backbone!r} is a {config.backbone_model_type} model, but {folder} holds a "
            f"{hf_config.model_type!r} model"
        )
    fingerprint = backbone_fingerprint(folder)
    if config.backbone_fingerprint is None:
        config.backbone_fingerprint = fingerprint
    elif config.backbone_fingerprint != fingerprint:
        raise InputError(
            f"this checkpoint was trained on a backbone with fingerprint {config.backbone_fingerprint}, "
            f"but {folder} has fingerprint {fingerprint}: point backbone_path at the training backbone"
        )

    dtype = getattr(torch, config.backbone_dtype)
    if config.backbone_init == "pretrained":
        if not any(folder.glob("*.safetensors")):
            raise MissingFileError(f"{folder} has no *.safetensors weights (backbone_init='random' is for benchmarks)")
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
    else:
        model = AutoModelForImageTextToText.from_config(hf_config, dtype=dtype)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    tokens = act_tokens(config.chunk_size)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if config.act_token_ids and list(config.act_token_ids) != ids:
        raise InputError(
            f"the checkpoint's <ACT_i> token ids {config.act_token_ids} differ from the ids {ids} the "
            f"tokenizer of {folder} gives them: another tokenizer than at training"
        )
    config.act_token_ids = ids
    if max(ids) >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    _init_act_rows(model, ids)
    model.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    if config.finetune == "lora":
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=LORA_TARGETS,
            trainable_token_indices={"embed_tokens": ids},
        )
    else:
        peft_config = TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=ids)
    backbone = get_peft_model(model, peft_config)
    if config.compile_model:
        for layer in decoder_layers(model):
            layer.compile(mode=config.compile_mode)
    if config.finetune == "full":
        backbone.get_base_model().requires_grad_(True)
    if config.finetune == "lora":
        adapted = [name for name, module in backbone.named_modules() if hasattr(module, "lora_A")]
        expected = 4 * hf_config.get_text_config().num_hidden_layers
        if len(adapted) != expected or any("language_model" not in name for name in adapted):
            raise RuntimeError(
                f"LoRA should adapt the {expected} q/k/v/o projections of the language model, "
                f"it adapted {len(adapted)}: {adapted[:6]}..."
            )
    return backbone, processor


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers of a Qwen-VL `...ForConditionalGeneration` model."""
    return model.model.language_model.layers


@torch.no_grad()
def _init_act_rows(model: nn.Module, ids: list[int]) -> None:
    """Deterministic initial `<ACT_i>` rows (the vocabulary's mean plus seeded noise of a tenth of its
    std), so rebuilding the backbone for a checkpoint reproduces every row the adapter does not hold."""
    generator = torch.Generator().manual_seed(0)
    tables = {id(t): t for t in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    for table in tables.values():
        known = table[: min(ids)]
        sample = known[:: max(1, len(known) // 4096)].float()
        noise = torch.randn(len(ids), table.shape[1], generator=generator, device="cpu").to(table.device)
        table[ids] = (sample.mean(0) + 0.1 * sample.std(0) * noise).to(table.dtype)


class QwenVLAWorldPolicy(ForgetsGraphs, WorldMemoryPolicy, ActionHeads, QueuedActions, PreTrainedPolicy):
    """Qwen-VL `<ACT_i>` states (+ proprio, + world memory) -> an action chunk of H normalised actions."""

    config_class = QwenVLAWorldConfig
    name = "qwen_vla_world"

    def __init__(self, config: QwenVLAWorldConfig, **kwargs) -> None:
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.backbone, self.processor = load_backbone(config)
        # Rollouts (eval mode) tokenise each distinct prompt once: only the image changes within an episode.
        self.processor.tokenizer = CachedTokenizer(self.processor.tokenizer, enabled=not self.training)
        hidden = self.backbone.get_base_model().config.get_text_config().hidden_size
        self.register_buffer("act_ids", torch.tensor(config.act_token_ids), persistent=False)
        if config.use_proprio:
            self.state_proj = nn.Linear(config.state_dim, hidden)
            self.proprio_gate = nn.Parameter(torch.tensor(0.0))
        self.encoder_spec = EncoderSpec.from_dict(config.encoder_spec) if config.encoder_spec else None
        if config.use_world_module:
            self.world = WorldModule(WorldModuleConfig.from_policy_config(config, hidden))
            self._history = LatentHistory(self.encoder_spec, config.history_len)
            self._frame_encoder: OnlineEncoder | None = None
        self.head_in = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, config.head_dim))
        self.build_action_head(config.head_dim)
        self.register_step_counter()
        self._layouts: dict[tuple, PromptLayout] = {}
        self.use_cuda_graphs(config.cuda_graphs)
        self.reset()

    def use_cuda_graphs(self, scope: str) -> None:
        """Replay inference on CUDA from one CUDA graph per chunk (`cuda_graphs`: chunk, off) from now on: a Qwen3-VL
        backbone, not compiled (Qwen2.5-VL's vision tower reads the GPU from the host: it stays eager)."""
        self.config.cuda_graphs = check_graph_scope(scope, CUDA_GRAPH_SCOPES)
        hf_model = self.backbone.get_base_model().model
        capturable = self.config.backbone_model_type == "qwen3_vl" and not self.config.compile_model
        if capturable:
            use_positional_deepstack(hf_model)
        self._graphed = GraphedStep(self._chunk_from_layout) if scope == "chunk" and capturable else None

    def compile_targets(self) -> list[nn.Module]:
        """The language model's decoder layers, each compiled alone (they share one compiled graph, as with
        `compile_model`)."""
        return list(decoder_layers(self.backbone.get_base_model()))

    # --- LeRobot interface ------------------------------------------------------------------

    def train(self, mode: bool = True) -> QwenVLAWorldPolicy:
        """Training tokenises every batch afresh; eval mode remembers the prompts' tokens (`CachedTokenizer`)."""
        self.processor.tokenizer.enabled = not mode
        return super().train(mode)

    def reset(self) -> None:
        """Start new episodes: forget queued actions and the world-latent history."""
        self.reset_action_queue()
        if self.config.use_world_module:
            self._history.reset()

    def observe(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Rollouts: add the world-latent history, encoding the current observation online with the
        checkpoint's encoder spec (unchanged when the batch already holds latents)."""
        if not self.config.use_world_module:
            return batch
        return self._history.observe(batch, self._device)

    def forward(self, batch: dict[str, Any], memory_mode: str | None = None) -> tuple[Tensor, dict[str, float]]:
        """Training loss L = L_action + lambda_world L_world + lambda_text L_text, and logged scalars."""
        actions = batch[self.config.action_key].float()
        if self.in_prophet_stage():
            return self.prophet_stage_forward(*self._latent_history(batch), *self.future_latents(batch))
        coc = self._coc_texts(batch)
        joint = coc if self.config.text_loss_mode == "joint_after_act" else None
        h_act, text_loss = self._act_states(batch, joint)
        if coc is not None and self.config.text_loss_mode == "separate":
            text_loss = self._separate_text_loss(batch, coc)
        h_act, world_out = self._read_world(h_act, batch, memory_mode, self.train_step)
        logs = scalars_to_floats(self.world_logs(world_out))
        world_loss = None if world_out is None else world_out.world_loss
        action_loss = self.padded_action_loss(self.action_loss_terms(self.head_in(h_act), actions), batch)
        loss = self.world_loss_total(action_loss, world_loss, text_loss, lambda_text=self.config.lambda_text)
        self.count_training_step()
        logs["action_loss"] = action_loss.item()
        if text_loss is not None:
            logs["text_loss"] = text_loss.item()
        if coc is not None:
            logs["coc_fraction"] = sum(t is not None for t in coc) / len(coc)
        if self.config.use_proprio:
            logs["proprio_gate"] = torch.tanh(self.proprio_gate).item()
        logs["loss"] = loss.item()
        return loss, logs

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], memory_mode: str | None = None) -> Tensor:
        """Normalised action chunk [B, H, A]; rollouts use ``world_memory_mode_rollout`` by default."""
        batch = self.observe(batch)
        memory_mode = memory_mode or self.config.world_memory_mode_rollout
        if self._graphed is not None and not self.training and self._device.type == "cuda":
            return self._replayed_chunk(batch, memory_mode)
        h_act, _ = self._act_states(batch)
        return self._actions(h_act, batch, memory_mode)

    def _replayed_chunk(self, batch: dict[str, Any], memory_mode: str) -> Tensor:
        """`predict_action_chunk` with the backbone pass, the memory read and the head replayed from one CUDA graph:
        what depends on the prompts alone (`PromptLayout`) is computed once per prompt layout, the memory is prepared
        eagerly (one Prophet pass, one draw for the controls) and the head's noise drawn ahead."""
        images, texts, prompts = self._prompts(batch)
        inputs = self._processed(images, prompts)
        layout = self._layout_of(inputs, texts)
        memory = self._prepared_memory(batch, memory_mode)
        parts = PreparedMemory.as_inputs(memory)
        state = batch[self.config.state_key].to(self._device, torch.float32) if self.config.use_proprio else None
        autocast = torch.is_autocast_enabled(self._device.type)
        head_dtype = torch.get_autocast_dtype(self._device.type) if autocast else torch.float32
        noise = self.head_noise(batch, len(images), self._device, head_dtype)
        pixels = inputs["pixel_values"].to(self._device)
        return self._graphed(pixels, state, noise, *layout.tensors(), *parts, layout=layout.grid, key=layout.grid)

    def _layout_of(self, inputs: Any, texts: list[str]) -> PromptLayout:
        """The `PromptLayout` of a processor output, computed once per distinct prompts and image grid."""
        ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu()
        grid = inputs["image_grid_thw"].cpu()
        key = (tuple(ids.shape), ids.numpy().tobytes(), mask.numpy().tobytes(), grid.numpy().tobytes())
        if key not in self._layouts:
            self._check_act_slots(ids, texts)
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.clear()
            hf_model = self.backbone.get_base_model().model
            self._layouts[key] = prompt_layout(
                hf_model, ids, mask, inputs["mm_token_type_ids"].cpu(), grid, self._device
            )
        return self._layouts[key]

    def _chunk_from_layout(self, pixel_values: Tensor, state: Tensor | None, noise: Tensor | None, *tensors, layout):
        """The chunk the graph captures: the backbone pass on the prompt layout's tensors (`layout_forward`; ``layout``
        the image grid), the `<ACT_i>` states, the read of the prepared memory (the last `MEMORY_INPUTS` tensors), the
        head from its noise."""
        prompt, memory = tensors[:-MEMORY_INPUTS], tensors[-MEMORY_INPUTS:]
        hidden = layout_forward(self.backbone.get_base_model().model, pixel_values, *prompt, grid=layout)
        h_act = self._act_hidden(hidden, prompt[0].shape[1], state)
        if self.config.use_world_module:
            h_act = self.world.read_memory(h_act, PreparedMemory.from_inputs(memory))
        return self.actions_from_noise(self.head_in(h_act), noise)

    def _actions(self, h_act: Tensor, batch: dict[str, Any], memory_mode: str) -> Tensor:
        """Action chunk [B, H, A] from the `<ACT_i>` states: world memory (prepared as the graph path prepares it, so
        that both give the same actions), then the head (sampled for flow)."""
        if self.config.use_world_module:
            h_act = self.world.read_memory(h_act, self._prepared_memory(batch, memory_mode))
        return self.sample_actions(self.head_in(h_act), batch)

    # --- backbone pass ------------------------------------------------------------------------

    @property
    def _device(self) -> torch.device:
        return self.act_ids.device

    def _images(self, batch: dict[str, Any]) -> list[Tensor]:
        """Per-sample float images [3, H, W] in [0, 1]; with ``wrist_mode='concat'`` the wrist image
        sits to the right of the main one."""
        image = batch[self.config.image_key]
        if self.config.wrist_mode == "concat":
            wrist = batch[self.config.wrist_key]
            if wrist.shape[-2] != image.shape[-2]:
                raise InputError(
                    f"wrist image height {wrist.shape[-2]} != main image height {image.shape[-2]} "
                    f"({self.config.wrist_key!r} vs {self.config.image_key!r}); concat needs equal heights"
                )
            image = torch.cat([image, wrist], dim=-1)
        if image.ndim != 4 or image.shape[1] != 3:
            raise InputError(
                f"{self.config.image_key!r} must be float images [B, 3, H, W] in [0, 1], got {tuple(image.shape)}"
            )
        return list(image.float())

    def _prompts(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[str], list[str]]:
        """The batch's images, instructions and the prompts built from them (`build_prompt`)."""
        images = self._images(batch)
        texts = self.instruction_texts(batch, len(images))
        return images, texts, [build_prompt(self.config.prompt_format, t, self.config.chunk_size) for t in texts]

    def _processed(self, images: list[Tensor], prompts: list[str]) -> Any:
        """The processor's output for images and prompts (left-padded; images processed on the policy's device)."""
        return self.processor(
            images=images, text=prompts, padding=True, return_tensors="pt", do_rescale=False, device=self._device
        )

    def _backbone_pass(
        self,
        images: list[Tensor],
        prompts: list[str],
        coc: list[str | None] | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Last-layer hidden states [B, L, d] of the prompts (left-padded), the prompt token ids [B, Lp],
        and the mean CoC cross-entropy when ``coc`` is given (texts appended after the prompts, each padded to
        ``coc_max_tokens``; None entries contribute no tokens)."""
        inputs = self._processed(images, prompts).to(self._device)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        mm_token_type_ids = inputs["mm_token_type_ids"]
        prompt_len = input_ids.shape[1]
        labels = None
        if coc is not None:
            coc_ids, coc_mask = self._coc_tokens(coc)
            labels = coc_ids.masked_fill(~coc_mask, IGNORE_INDEX)
            input_ids = torch.cat([input_ids, coc_ids], dim=1)
            attention_mask = torch.cat([attention_mask, coc_mask.to(attention_mask.dtype)], dim=1)
            mm_token_type_ids = torch.cat(
                [mm_token_type_ids, torch.zeros_like(coc_ids, dtype=mm_token_type_ids.dtype)], 1
            )
        hf_model = self.backbone.get_base_model()
        hidden = hf_model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            use_cache=False,
        ).last_hidden_state
        text_loss = None
        if labels is not None and (labels != IGNORE_INDEX).any():
            # Position p predicts token p+1: the last prompt token predicts the first CoC token.
            logits = hf_model.lm_head(hidden[:, prompt_len - 1 : -1]).float()
            text_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
        return hidden, inputs["input_ids"], text_loss

    def _act_states(self, batch: dict[str, Any], coc: list[str | None] | None = None) -> tuple[Tensor, Tensor | None]:
        """[B, H, d] float hidden states at the `<ACT_i>` tokens (+ the joint CoC loss when ``coc``)."""
        images, texts, prompts = self._prompts(batch)
        hidden, prompt_ids, text_loss = self._backbone_pass(images, prompts, coc)
        self._check_act_slots(prompt_ids, texts)
        state = batch[self.config.state_key].float() if self.config.use_proprio else None
        return self._act_hidden(hidden, prompt_ids.shape[1], state), text_loss

    def _check_act_slots(self, prompt_ids: Tensor, texts: list[str]) -> None:
        h = self.config.chunk_size
        act_ids = self.act_ids.to(prompt_ids.device)
        if not (prompt_ids[:, -h:] == act_ids).all() or not ((prompt_ids[..., None] == act_ids).sum((1, 2)) == h).all():
            raise InputError(
                "every prompt must end with <ACT_0> .. <ACT_{H-1}> and hold them once (does an instruction "
                f"contain an <ACT_i> token?): instructions {texts}"
            )

    def _act_hidden(self, hidden: Tensor, prompt_len: int, state: Tensor | None) -> Tensor:
        """[B, H, d] float states at the `<ACT_i>` tokens (the prompts' last H), with the gated proprio residual."""
        h_act = hidden[:, prompt_len - self.config.chunk_size : prompt_len].float()
        if self.config.use_proprio:
            h_act = h_act + torch.tanh(self.proprio_gate) * self.state_proj(state)[:, None]
        return h_act

    def _separate_text_loss(self, batch: dict[str, Any], coc: list[str | None]) -> Tensor | None:
        """The CoC loss of a second pass over [image, instruction, CoC] for the labelled samples."""
        rows = [i for i, text in enumerate(coc) if text is not None]
        if not rows:
            return None
        images = self._images(batch)
        instructions = self.instruction_texts(batch, len(images))
        prompts = [
            build_prompt(self.config.prompt_format, instructions[i], self.config.chunk_size, with_actions=False)
            for i in rows
        ]
        return self._backbone_pass([images[i] for i in rows], prompts, [coc[i] for i in rows])[2]

    # --- chain-of-causation text ---------------------------------------------------------------

    def _coc_texts(self, batch: dict[str, Any]) -> list[str | None] | None:
        """The batch's CoC texts (None = no label), or None when the text loss is off."""
        if self.config.lambda_text == 0:
            return None
        if self.config.coc_key not in batch:
            raise KeyError(
                f"lambda_text={self.config.lambda_text} but the batch has no {self.config.coc_key!r} "
                "(CoC labels by episode, from a JSONL of {episode_index, coc_text}); set lambda_text=0 "
                "to train without text"
            )
        texts = [None if t is None or not str(t).strip() else str(t) for t in batch[self.config.coc_key]]
        if self.config.require_coc and None in texts:
            episodes = batch.get("episode_index")
            missing = [int(episodes[i]) if episodes is not None else i for i, t in enumerate(texts) if t is None]
            raise InputError(
                f"require_coc=True but episode(s) {missing} have no CoC label "
                f"({'episode_index' if episodes is not None else 'batch row'} shown)"
            )
        return texts

    def _coc_tokens(self, texts: list[str | None]) -> tuple[Tensor, Tensor]:
        """Token ids [B, C] and mask [B, C] of the CoC texts (each ending with the turn's end token),
        truncated or right-padded to C = ``coc_max_tokens``."""
        tokenizer = self.processor.tokenizer
        size = self.config.coc_max_tokens
        ids = torch.full((len(texts), size), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(texts), size, dtype=torch.bool)
        for row, text in enumerate(texts):
            if text is not None:
                tokens = tokenizer(text + TEXT_END, add_special_tokens=False)["input_ids"][:size]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = True
        return ids.to(self._device), mask.to(self._device)

    # --- world memory ---------------------------------------------------------------------------

    def _read_world(self, h_act: Tensor, batch: dict[str, Any], memory_mode: str | None, step: Tensor | None):
        """The world module on the `<ACT_i>` states; (h_act, None) without a world module."""
        if not self.config.use_world_module:
            return h_act, None
        z_hist, hist_mask = self._latent_history(batch)
        return self.world(
            h_act,
            z_hist,
            *self.future_latents(batch),
            mode=memory_mode,
            step=step,
            history_mask=hist_mask,
            train_prophet=self.trains_prophet,
            generator=batch.get(ROLLOUT_GENERATORS),
        )

    def _prepared_memory(self, batch: dict[str, Any], memory_mode: str) -> PreparedMemory | None:
        """The memory `_read_world` reads at inference, prepared once (None without a world module or memory)."""
        if not self.config.use_world_module:
            return None
        z_hist, hist_mask = self._latent_history(batch)
        z_future, _ = self.future_latents(batch)
        return self.world.prepare_memory(z_hist, hist_mask, z_future, memory_mode, batch.get(ROLLOUT_GENERATORS))

    def _latent_history(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """History [B, T, D] and mask [B, T]: from the batch, or (plain lerobot-train) the current frame
        encoded on its own, the earlier slots masked."""
        if WORLD_LATENTS in batch:
            return self.history_latents(batch)
        source = self.config.latent_source_key
        if source not in batch:
            raise KeyError(
                f"the batch has neither {WORLD_LATENTS!r} nor the encoder's input {source!r}; keys: {sorted(batch)}"
            )
        if self._frame_encoder is None:
            self._frame_encoder = OnlineEncoder(self.encoder_spec, device=self._device)
        self._frame_encoder.reset()
        current = self._frame_encoder(encoder_input(batch[source], self.encoder_spec.reads_states))
        current = current.to(self._device, torch.float32)[:, None]
        z = torch.cat([current.new_zeros(current.shape[0], self.config.history_len - 1, current.shape[2]), current], 1)
        mask = torch.zeros(z.shape[:2], dtype=torch.bool, device=z.device)
        mask[:, -1] = True
        return self.checked_history(z, mask)

    # --- checkpoints ------------------------------------------------------------------------------

    def _own_state_dict(self) -> dict[str, Tensor]:
        """Everything but the backbone (heads, proprio, world module, step counter)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        save_directory = Path(save_directory)
        self.config._save_pretrained(save_directory)
        own = state_dict if state_dict is not None else self._own_state_dict()
        own = {k: v.detach().contiguous().cpu() for k, v in own.items() if not k.startswith("backbone.")}
        save_file(own, str(save_directory / WEIGHTS_FILE))
        self.backbone.save_pretrained(save_directory / ADAPTER_DIR)
        if self.config.finetune == "full":
            save_model(self.backbone.get_base_model(), str(save_directory / BACKBONE_FILE))

    @classmethod
    def _load_as_safetensor(cls, model: QwenVLAWorldPolicy, model_file: str, map_location: str, strict: bool):
        """Load the policy's own weights and the backbone adapter; any missing part is an error."""
        folder = Path(model_file).parent
        if not Path(model_file).is_file():
            raise MissingFileError(f"{folder} has no {WEIGHTS_FILE} (heads, world module)")
        state = load_file(model_file)
        expected = set(model._own_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise InputError(f"{model_file} does not match the policy: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(state, strict=False)
        if model.config.finetune == "full":
            backbone_file = folder / BACKBONE_FILE
            if not backbone_file.is_file():
                raise MissingFileError(
                    f"{folder} has no {BACKBONE_FILE}: a finetune='full' checkpoint holds its trained backbone there"
                )
            missing, unexpected = load_model(model.backbone.get_base_model(), str(backbone_file), strict=False)
            if missing or unexpected:
                raise InputError(
                    f"{backbone_file} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        model._load_adapter(folder / ADAPTER_DIR)
        return model

    def _load_adapter(self, adapter_dir: Path) -> None:
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        weights_file = adapter_dir / "adapter_model.safetensors"
        if not weights_file.is_file():
            raise MissingFileError(
                f"{adapter_dir} has no adapter_model.safetensors: without it the LoRA weights and "
                "the <ACT_i> embeddings would be untrained"
            )
        saved = json.loads((adapter_dir / "adapter_config.json").read_text())
        current = json.loads(json.dumps(self.backbone.peft_config["default"].to_dict(), default=sorted))
        for key in ("peft_type", "r", "lora_alpha", "target_modules", "trainable_token_indices", "token_indices"):
            if _canonical(saved.get(key)) != _canonical(current.get(key)):
                raise InputError(f"backbone adapter {key}: checkpoint {saved.get(key)!r}, policy {current.get(key)!r}")
        weights = load_file(weights_file)
        set_peft_model_state_dict(self.backbone, weights)
        loaded = get_peft_model_state_dict(self.backbone)
        if set(loaded) != set(weights):
            raise InputError(
                f"backbone adapter keys differ: missing {sorted(set(loaded) - set(weights))[:5]}, "
                f"unexpected {sorted(set(weights) - set(loaded))[:5]}"
            )
        for key, value in weights.items():
            if not torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)):
                raise ValueError(f"backbone adapter tensor {key} did not load")


def _canonical(value: Any) -> Any:
    """Peft writes sets (target modules) as lists in arbitrary order: compare those sorted."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value
