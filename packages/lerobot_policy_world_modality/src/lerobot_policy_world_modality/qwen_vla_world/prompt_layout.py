"""F+ inference on a prompt layout the host knows, free of GPU-to-host reads, so that a CUDA graph can hold it
(docs/ARCHITECTURE.md, Fast inference).

transformers' Qwen3-VL forward reads the GPU from the host about fifteen times per call: the rope index (`.item()`
per image), the check and `masked_scatter` of the image features, the deepstack features' boolean indexing, the
vision tower's sequence lengths, the causal mask's all-ones check. Each depends only on the prompts' tokens and the
image grid, which the host holds before the GPU runs: `prompt_layout` computes them once per layout, on the host, and
`layout_forward` runs transformers' own modules with them, giving the same hidden states bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLTextModel

Grid = tuple[tuple[int, int, int], ...]  # (t, h, w) patches of each image, on the host


@dataclass(frozen=True)
class PromptLayout:
    """What a batch of prompts fixes before the images are seen: the token ids [B, L], the multimodal rope positions
    [3, B, L], the 4-D attention mask (None without padding), the (row, column) of every image token in the order
    the vision tower emits them, and the image grid. Tensors on the policy's device."""

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor | None
    image_rows: Tensor
    image_cols: Tensor
    grid: Grid

    def tensors(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        return self.input_ids, self.position_ids, self.attention_mask, self.image_rows, self.image_cols


def prompt_layout(
    model: Qwen3VLModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    mm_token_type_ids: Tensor,
    image_grid_thw: Tensor,
    device: torch.device,
) -> PromptLayout:
    """The layout of a processor's output (its tensors on the CPU); computed on the host, then moved once."""
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    image_grid_thw = image_grid_thw.cpu()
    position_ids, _ = model.get_rope_index(
        input_ids, mm_token_type_ids.cpu(), image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    rows, cols = (input_ids == model.config.image_token_id).nonzero(as_tuple=True)  # row-major: masked_scatter's order
    mask = None
    if not bool(attention_mask.all()):
        embeds = torch.empty(*input_ids.shape, 0, dtype=model.language_model.dtype, device=device)
        mask = create_causal_mask(
            config=model.language_model.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask.to(device),
            past_key_values=None,
            position_ids=None,
        )
    return PromptLayout(
        input_ids.to(device),
        position_ids.to(device),
        mask,
        rows.to(device),
        cols.to(device),
        tuple(tuple(int(v) for v in row) for row in image_grid_thw.tolist()),
    )


def layout_forward(
    model: Qwen3VLModel,
    pixel_values: Tensor,
    input_ids: Tensor,
    position_ids: Tensor,
    attention_mask: Tensor | None,
    image_rows: Tensor,
    image_cols: Tensor,
    grid: Grid,
) -> Tensor:
    """Last-layer hidden states [B, L, d] of `Qwen3VLModel.forward` for the prompts of a `PromptLayout` and their
    images, without reading the GPU from the host (the image grid stays on the host)."""
    vision = model.visual(pixel_values.type(model.visual.dtype), grid_thw=torch.tensor(grid), return_dict=True)
    embeds = model.get_input_embeddings()(input_ids)
    embeds = embeds.index_put((image_rows, image_cols), vision.pooler_output.to(embeds.dtype))
    return model.language_model(
        input_ids=None,
        position_ids=position_ids,
        attention_mask=attention_mask,
        inputs_embeds=embeds,
        visual_pos_masks=(image_rows, image_cols),
        deepstack_visual_embeds=vision.deepstack_features,
    ).last_hidden_state


class PositionalDeepstackTextModel(Qwen3VLTextModel):
    """Qwen3-VL's language model that also takes the visual positions as (rows, columns) index tensors: the deepstack
    features are then added without a boolean index (which reads the GPU to count). Swapped in at model build
    (`use_positional_deepstack`): same weights and keys; with transformers' boolean mask it is transformers' code."""

    def _deepstack_process(self, hidden_states: Tensor, visual_pos_masks, visual_embeds: Tensor) -> Tensor:
        if not isinstance(visual_pos_masks, tuple):
            return super()._deepstack_process(hidden_states, visual_pos_masks, visual_embeds)
        rows, cols = visual_pos_masks
        visual_embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
        return hidden_states.index_put((rows, cols), hidden_states[rows, cols] + visual_embeds)


def use_positional_deepstack(model: Qwen3VLModel) -> None:
    """Swap the language model's class for `PositionalDeepstackTextModel` (a Qwen3-VL model only)."""
    if type(model.language_model) is Qwen3VLTextModel:
        model.language_model.__class__ = PositionalDeepstackTextModel
