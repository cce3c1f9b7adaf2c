"""SmolVLM's vision tower as SmolVLA calls it (every patch real), without GPU synchronisation.

SmolVLA embeds each camera with ``vision_model(pixel_values, patch_attention_mask=None)``: every patch is real.
transformers' tower still builds a mask of ones and then (a) writes the position ids through boolean indexing,
which waits for the GPU to count the mask, and (b) asks whether the mask is all ones before attention, which waits
again. Both forbid capturing the VLM prefix in a CUDA graph. `FullGridVisionTransformer` computes the same
position ids with the same operations for a full grid, and attends without a mask (what transformers does for an
all-ones mask with SDPA; with eager attention its mask adds zeros), so its output equals transformers' bit for bit
(tests/test_cuda_graphs.py). With a patch mask it is transformers' tower unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer


class FullGridVisionTransformer(SmolVLMVisionTransformer):
    def forward(self, pixel_values: Tensor, patch_attention_mask: Tensor | None = None, **kwargs) -> BaseModelOutput:
        if patch_attention_mask is not None or kwargs:
            return super().forward(pixel_values, patch_attention_mask=patch_attention_mask, **kwargs)
        embeddings = self.embeddings
        batch_size, _, height, width = pixel_values.shape
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        rows, columns = height // embeddings.patch_size, width // embeddings.patch_size
        side = embeddings.num_patches_per_side
        device = pixel_values.device
        boundaries = torch.arange(1 / side, 1.0, 1 / side, device=device)

        def buckets(count: int) -> Tensor:
            # transformers' fractional coordinates for a row or column of `count` real patches, bucketed to the
            # tower's position grid: the same operations in the same dtypes, so the same ids
            step = 1.0 / torch.full((1,), count, device=device)
            fractions = torch.arange(count, device=device, dtype=torch.float32)[None, :] * step[:, None]
            fractions = torch.clamp(fractions, max=(1.0 - 1e-6)).to(pixel_values.dtype)
            return torch.bucketize(fractions, boundaries, right=True)[0]

        position_ids = (buckets(rows)[:, None] * side + buckets(columns)[None, :]).reshape(1, -1)
        hidden = patches + embeddings.position_embedding(position_ids.expand(batch_size, -1))
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.post_layernorm(hidden))


def use_full_grid_vision(vision_model: SmolVLMVisionTransformer) -> None:
    """Make ``vision_model`` (a loaded SmolVLM tower) a `FullGridVisionTransformer`: the same module, weights and
    state-dict keys, with the synchronisation-free path for calls without a patch mask."""
    if type(vision_model) is not SmolVLMVisionTransformer:
        raise TypeError(f"expected transformers' SmolVLMVisionTransformer, got {type(vision_model).__name__}")
    vision_model.__class__ = FullGridVisionTransformer
