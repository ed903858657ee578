"""Regional prompts (Regional Prompter's attention mode; "attention couple"): one prompt per box plus a base.

Every region r has its own text encoding E_r and the base prompt E_0 covers the image. In each cross-attention
layer the output at query q is a per-query mixture of separate attentions,

    O(q) = sum_r a_r(q) softmax(q K_r^T / sqrt(d)) V_r / sum_r a_r(q),

with ``a_0(q) = beta`` inside any box and 1 outside every box (beta: the base ratio), and
``a_r(q) = (1 - beta) w_r [q in B_r]`` for the regions (w_r: region weights). Inside one box this is Regional
Prompter's ``beta O_base + (1 - beta) O_region``; where boxes overlap the regions share by weight.

On the core: the ``context`` hook hands the layer all encodings side by side on the token axis (one key and
one value projection, exact because the projections act token by token), and the ``kernel`` hook attends to
each block with its own softmax and mixes the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..composer.geometry import Grid
from ..composer.rca import RowSelector, all_rows
from ..core import AttentionCall, AttentionControl, ContextSets, sdpa
from .masks import Box, region_masks


def couple_weights(masks: torch.Tensor, base_ratio: float, region_weights: Sequence[float]) -> torch.Tensor:
    """(regions + 1, queries) mixing weights ``a_r(q) / sum_r a_r(q)``; row 0 is the base prompt."""
    weights = torch.tensor([float(w) for w in region_weights])[:, None]  # (R, 1)
    regions = (1 - base_ratio) * weights * masks.float()  # (R, q)
    base = torch.where(masks.any(0), torch.tensor(float(base_ratio)), torch.tensor(1.0))  # (q,)
    raw = torch.cat([base[None], regions])  # (R + 1, q)
    return raw / raw.sum(0, keepdim=True)


class RegionalPrompts(AttentionControl):
    """Each box's cross-attention output comes from its own prompt encoding, mixed with the base prompt's.

    Args:
        boxes: normalised ``(x0, y0, x1, y1)`` per region.
        encodings: (regions, tokens, dim) text-encoder states of the region prompts (same length as the base).
        base_ratio: beta in [0, 1], the base prompt's share inside the boxes.
        region_weights: w_r > 0 per region.
        rows: the batch rows that get the regions (the conditional half); other rows keep their own context.
    """

    def __init__(
        self,
        boxes: Sequence[Box],
        encodings: torch.Tensor,
        base_ratio: float,
        region_weights: Sequence[float],
        rows: RowSelector = all_rows,
    ) -> None:
        if encodings.ndim != 3 or encodings.shape[0] != len(boxes):
            raise ValueError(f"encodings must be (regions={len(boxes)}, tokens, dim); got {tuple(encodings.shape)}")
        self.boxes, self.encodings = list(boxes), encodings
        self.base_ratio, self.region_weights, self.rows = float(base_ratio), list(region_weights), rows
        self._weights: dict[Grid, torch.Tensor] = {}

    def applies_to(self, call: AttentionCall) -> bool:
        return call.is_cross and call.grid is not None and len(call.grid) == 2

    def context(self, call: AttentionCall, encoder_hidden_states: torch.Tensor) -> ContextSets:
        """(batch, (regions + 1) * tokens, dim): the layer's own context, then every region's encoding."""
        if call.is_joint:
            raise ValueError(f"layout_mode='prompts' needs cross-attention layers (SD 1.x/2.x, SDXL); layer "
                             f"{call.layer.name} is joint attention, where text and image tokens share one sequence")
        if encoder_hidden_states.shape[1:] != self.encodings.shape[1:]:
            raise ValueError(
                f"region prompt encodings are {tuple(self.encodings.shape[1:])} (tokens, dim) but the layer's "
                f"context is {tuple(encoder_hidden_states.shape[1:])}; encode them with the same text encoder"
            )
        blocks = encoder_hidden_states[None].repeat(len(self.boxes) + 1, 1, 1, 1)  # (R + 1, batch, tokens, dim)
        blocks[1:, self.rows(call)] = self.encodings[:, None].to(blocks)
        return ContextSets.single(torch.cat(list(blocks), dim=1))

    def mixing(self, call: AttentionCall, batch: int) -> torch.Tensor:
        """(regions + 1, batch, 1, queries, 1) weights: the couple weights on the chosen rows, the base alone
        (weight 1) on the others."""
        grid = tuple(call.grid)
        if grid not in self._weights:
            self._weights[grid] = couple_weights(region_masks(self.boxes, grid), self.base_ratio, self.region_weights)
        weights = torch.zeros(len(self.boxes) + 1, batch, self._weights[grid].shape[1])
        weights[0] = 1
        weights[:, self.rows(call)] = self._weights[grid][:, None]
        return weights[:, :, None, :, None]

    def kernel(self, call: AttentionCall):
        def mixed(query, key, value, attn_mask):
            if attn_mask is not None:
                raise ValueError(f"layout_mode='prompts' does not take an encoder attention mask (layer "
                                 f"{call.layer.name}); the region prompts would need their own")
            blocks = len(self.boxes) + 1
            length = key.shape[-2] // blocks
            weights = self.mixing(call, query.shape[0]).to(query)
            out = 0
            for index in range(blocks):
                part = slice(index * length, (index + 1) * length)
                out = out + sdpa(query, key[..., part, :], value[..., part, :], None) * weights[index]
            return out

        return mixed
