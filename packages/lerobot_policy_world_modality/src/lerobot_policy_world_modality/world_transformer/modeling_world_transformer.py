"""The small world-transformer policy family (models A, B, B_cont, C, F) as one LeRobot policy.

One code path for training and rollout: the latent history comes from the batch
(``observation.world_latents``, precomputed from the latent cache: the fast training path) or,
when the batch holds the raw observation instead (lerobot-eval, our rollout runner), is encoded
online with an `OnlineEncoder` built from the encoder spec stored in the config. Model F reads the
shared `WorldModule` unchanged.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor, nn

from lerobot_policy_world_modality.common import ActionHeads, QueuedActions, WorldMemoryPolicy
from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world import (
    WorldModule,
    WorldModuleConfig,
    scalars_to_floats,
    world_cosine_loss,
)
from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS, LatentHistory
from lerobot_policy_world_modality.world_tokens import nearest_code
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
    WORLD_FUTURE,
    WORLD_LATENTS,
    WorldTransformerConfig,
)

_HISTORY, _STATE, _INSTRUCTION, _WORLD_TOKEN = range(4)  # token-type embedding rows


class InstructionEmbedding(nn.Module):
    """Instruction strings -> [B, d]: a learned row per vocabulary entry, or a frozen text encoder.

    An instruction outside the vocabulary is an error naming it and the vocabulary: an earlier
    system lost weeks to policies silently conditioned on empty or unseen prompts.
    """

    def __init__(self, config: WorldTransformerConfig) -> None:
        super().__init__()
        self.vocabulary = list(config.instructions)
        self._index = {text: i for i, text in enumerate(self.vocabulary)}
        self.text_encoder_path = config.text_encoder_path
        if self.text_encoder_path is None:
            self.embedding = nn.Embedding(len(self.vocabulary), config.d_model)
        else:
            self.proj = nn.Linear(self._text_model.config.hidden_size, config.d_model)
            self._text_cache: dict[str, Tensor] = {}

    @cached_property
    def _text_model(self) -> nn.Module:
        """The frozen text encoder; kept out of the module tree so it is neither trained nor saved."""
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.text_encoder_path, local_files_only=True).eval().requires_grad_(False)

    @cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.text_encoder_path, local_files_only=True)

    @torch.no_grad()
    def _encode_text(self, texts: list[str], device: torch.device) -> Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            inputs = self._tokenizer(missing, return_tensors="pt", padding=True)
            hidden = self._text_model(**inputs).last_hidden_state
            mask = inputs["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            self._text_cache.update(zip(missing, pooled.float(), strict=True))
        return torch.stack([self._text_cache[t] for t in texts]).to(device)

    def forward(self, texts: list[str], device: torch.device) -> Tensor:
        if self.text_encoder_path is not None:
            return self.proj(self._encode_text(texts, device))
        unknown = sorted({t for t in texts if t not in self._index})
        if unknown:
            raise InputError(f"instruction(s) {unknown} are not in the policy's vocabulary {self.vocabulary}")
        return self.embedding(torch.tensor([self._index[t] for t in texts], device=device))


class WorldTransformerPolicy(WorldMemoryPolicy, ActionHeads, QueuedActions, PreTrainedPolicy):
    """Transformer over [latent history, state, instruction, (C) world token, H action queries
    (, K future queries for B/B_cont/C)] -> an action chunk of H normalised actions."""

    config_class = WorldTransformerConfig
    name = "world_transformer"

    def __init__(self, config: WorldTransformerConfig, dataset_meta=None, **kwargs) -> None:
        super().__init__(config)
        # A new lerobot-train run completes its config from the latent cache (a checkpoint's is complete).
        self._cache = (
            _fill_from_latent_cache(config, dataset_meta)
            if config.latents_path and config.encoder_spec is None
            else None
        )
        codebook = _codebook(config) if config.tokens_path and config.uses_tokens and config.codebook_size < 2 else None
        config.validate_features()
        self.config = config
        self.encoder_spec = EncoderSpec.from_dict(config.encoder_spec)
        d, latent_dim = config.d_model, config.latent_dim

        self.latent_proj = nn.Linear(latent_dim, d)
        self.history_pos = nn.Parameter(torch.randn(config.history_len, d) * 0.02)
        self.state_proj = nn.Linear(config.state_dim, d)
        self.instruction = InstructionEmbedding(config)
        self.type_emb = nn.Parameter(torch.randn(4, d) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(config.chunk_size, d) * 0.02)
        if config.model_type in ("B", "B_cont", "C"):
            self.future_queries = nn.Parameter(torch.randn(config.num_future, d) * 0.02)
        if config.uses_tokens:
            # Filled from the fitted codebook before training; saved with the weights so the
            # token of a latent is the same at training and at rollout.
            self.register_buffer(
                "centroids", torch.zeros(config.codebook_size, latent_dim) if codebook is None else codebook
            )
            self.token_head = nn.Linear(d, config.codebook_size)
        if config.model_type == "C":
            self.token_emb = nn.Embedding(config.codebook_size, d)
        if config.model_type == "B_cont":
            self.future_head = nn.Linear(d, latent_dim)
        layer = nn.TransformerEncoderLayer(
            d,
            config.n_heads,
            config.dim_feedforward,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.trunk = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        if config.uses_world_module:
            self.world = WorldModule(WorldModuleConfig.from_policy_config(config, d, dropout=config.dropout))
        self.build_action_head(d)
        self.register_step_counter()
        self._latents = LatentHistory(self.encoder_spec, config.history_len, config.latent_source_key)
        self.reset()

    def compile_targets(self) -> list[nn.Module]:
        """The transformer trunk."""
        return [self.trunk]

    # --- LeRobot interface ------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new episode: forget queued actions, the latent history and the encoder's frames."""
        self.reset_action_queue()
        self._latents.reset()

    def forward(self, batch: dict[str, Tensor], memory_mode: str | None = None) -> tuple[Tensor, dict[str, float]]:
        """Training loss and logged scalars. ``memory_mode`` overrides the world memory (model F)."""
        actions = batch[self.config.action_key]
        if WORLD_LATENTS not in batch and self.config.latents_path and "index" in batch:
            # lerobot-train: the latents of the batch's frames, from the cache, by global frame index.
            if self._cache is None:
                self._cache = LatentCache.load(self.config.latents_path, expect_spec=self.encoder_spec)
            windows = self._cache.windows(
                torch.as_tensor(batch["index"]).reshape(-1), self.config.history_len, self.config.num_future
            )
            batch = {**batch, **{k: v.to(actions.device) for k, v in windows.as_batch().items()}}
        if self.config.model_type != "A" and WORLD_FUTURE not in batch:
            raise KeyError(
                f"model {self.config.model_type} trains on future latents ({WORLD_FUTURE!r}); the batch has "
                f"{sorted(batch)}: train with `wm train`, or under lerobot-train pass "
                "--policy.latents_path=<a `wm latents` cache of the dataset>"
            )
        z_future, future_mask = self.future_latents(batch)
        if self.in_prophet_stage():
            return self.prophet_stage_forward(*self.history_latents(batch), z_future, future_mask)
        h_act, h_future, z_hist, hist_mask = self._trunk(batch)
        logs: dict[str, Tensor | float] = {}
        world_loss = None
        if self.config.uses_world_module:
            h_act, world_out = self.world(
                h_act,
                z_hist,
                z_future,
                future_mask,
                mode=memory_mode,
                step=self.train_step,
                history_mask=hist_mask,
                train_prophet=self.trains_prophet,
            )
            world_loss = world_out.world_loss
            logs.update(self.world_logs(world_out))
        elif h_future is not None:
            world_loss, aux_logs = self._aux_loss(h_future, z_future, future_mask)
            logs.update(aux_logs)

        action_loss = self.padded_action_loss(self.action_loss_terms(h_act, actions), batch)
        loss = self.world_loss_total(action_loss, world_loss)
        self.count_training_step()
        logs["action_loss"] = action_loss.detach()
        logs["loss"] = loss.detach()
        return loss, scalars_to_floats(logs)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], memory_mode: str | None = None) -> Tensor:
        """Normalised action chunk [B, H, A]; rollouts use ``world_memory_mode_rollout`` by default."""
        batch = self.observe(batch)
        h_act, _, z_hist, hist_mask = self._trunk(batch)
        if self.config.uses_world_module:
            mode = memory_mode or self.config.world_memory_mode_rollout
            h_act, _ = self.world(
                h_act,
                z_hist,
                self.future_latents(batch)[0],
                mode=mode,
                history_mask=hist_mask,
                generator=batch.get(ROLLOUT_GENERATORS),
            )
        return self.sample_actions(h_act, batch)

    # --- internals ----------------------------------------------------------------------------

    def observe(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the latent history to a rollout batch by encoding its observation online."""
        return self._latents.observe(batch, self.action_queries.device)

    def _trunk(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Returns action-query states [B, H, d], future-query states [B, K, d] (B/B_cont/C),
        and the history [B, T, D] with its mask [B, T] (padding zeroed)."""
        z_hist, hist_mask = self.history_latents(batch)
        batch_size, t_ctx, _ = z_hist.shape
        device = z_hist.device
        tokens = [
            self.latent_proj(z_hist) + self.history_pos[self.config.history_len - t_ctx :] + self.type_emb[_HISTORY],
            (self.state_proj(batch[self.config.state_key].float()) + self.type_emb[_STATE])[:, None],
            (self.instruction(self.instruction_texts(batch, batch_size), device) + self.type_emb[_INSTRUCTION])[
                :, None
            ],
        ]
        if self.config.model_type == "C":
            tokens.append((self.token_emb(self._assign_tokens(z_hist[:, -1])) + self.type_emb[_WORLD_TOKEN])[:, None])
        queries = [self.action_queries.expand(batch_size, -1, -1)]
        if hasattr(self, "future_queries"):
            queries.append(self.future_queries.expand(batch_size, -1, -1))
        x = torch.cat(tokens + queries, dim=1)
        padding = torch.cat([~hist_mask, hist_mask.new_zeros(batch_size, x.shape[1] - t_ctx)], dim=1)
        x = self.out_norm(self.trunk(x, src_key_padding_mask=padding))
        start = x.shape[1] - sum(q.shape[1] for q in queries)
        h_act = x[:, start : start + self.config.chunk_size]
        h_future = x[:, start + self.config.chunk_size :] if len(queries) > 1 else None
        return h_act, h_future, z_hist, hist_mask

    def _assign_tokens(self, z: Tensor) -> Tensor:
        """World-token ids [...] of latents [..., D], assigned as `wm tokens` assigns the cache's."""
        return nearest_code(z, self.centroids)

    def _aux_loss(
        self, h_future: Tensor, z_future: Tensor, future_mask: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """B/C: cross-entropy on future world tokens; B_cont: cosine loss on future latents."""
        z_future = z_future.float()
        k = z_future.shape[1]
        valid = (
            torch.ones(z_future.shape[:2], dtype=torch.bool, device=z_future.device)
            if future_mask is None
            else future_mask.bool()
        )
        if self.config.model_type == "B_cont":
            loss, per_k = world_cosine_loss(self.future_head(h_future[:, :k]), z_future, valid)
            return loss, {"world_loss": loss.item(), **{f"world_loss_k{i}": v for i, v in enumerate(per_k.tolist(), 1)}}
        logits = self.token_head(h_future[:, :k])
        targets = self._assign_tokens(torch.where(valid[..., None], z_future, 0.0))
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * valid
        count = valid.sum(0)
        per_k = ce.sum(0) / count.clamp_min(1)
        loss = ce.sum() / count.sum().clamp_min(1)
        accuracy = ((logits.argmax(-1) == targets) & valid).sum() / count.sum().clamp_min(1)
        return loss, {
            "world_loss": loss.item(),
            "world_token_acc": accuracy.item(),
            **{f"world_loss_k{i}": v for i, v in enumerate(per_k.tolist(), 1)},
        }


def _fill_from_latent_cache(config: WorldTransformerConfig, dataset_meta) -> LatentCache:
    """lerobot-train: complete a new config from a latent cache (checked against the dataset) and the
    dataset's tasks; returns the cache."""
    cache = LatentCache.load(config.latents_path, dataset=None if dataset_meta is None else dataset_meta.root)
    spec = cache.spec
    config.encoder_spec, config.latent_dim = spec.to_dict(), spec.output_dim
    if not spec.reads_states:
        config.image_key = spec.camera_key
    if not config.instructions and config.text_encoder_path is None and dataset_meta is not None:
        config.instructions = sorted(str(task) for task in dataset_meta.tasks.index)
    return cache


def _codebook(config: WorldTransformerConfig) -> Tensor:
    """The `wm tokens` centroids [C, D] of models B and C; sets the config's codebook_size."""
    from lerobot_policy_world_modality.world_tokens import WorldTokens

    centroids = WorldTokens.load(config.tokens_path, latents=config.latents_path).centroids
    config.codebook_size = len(centroids)
    return centroids.float()
