"""Attention-bias layout and end/padding masks against literal computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from attnctl.core import AttentionCall, LayerInfo, attend
from attnctl.core.run import RunState
from attnctl.layout import (
    AttentionBiasLayout,
    ediffi_bias,
    paint_matrix,
    region_masks,
    special_keep_mask,
)

BOXES = [(0.0, 0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 1.0)]
TOKENS = [[1, 2], [2, 4]]  # token 2 belongs to both regions


def test_region_masks_are_the_overlapped_cells_in_raster_order():
    masks = region_masks(BOXES, (2, 4))  # (2, 8)
    expected = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks, expected)


def test_paint_matrix_matches_the_literal_sum_over_regions():
    masks = region_masks(BOXES, (2, 4))
    matrix = paint_matrix(masks, TOKENS, key_len=6)
    for q in range(8):
        for j in range(6):
            literal = sum((1.0 if masks[r, q] else -1.0) for r in range(2) if j in TOKENS[r])
            assert matrix[q, j] == literal


def test_ediffi_bias_matches_the_literal_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 6)
    logits[1, 2] -= 10  # an all-negative map: its max is clamped at 0, so no bias
    matrix = paint_matrix(region_masks(BOXES, (2, 4)), TOKENS, 6)
    out = ediffi_bias(logits, matrix, strength=0.7, sigma=3.0)
    for b in range(2):
        for h in range(3):
            peak = max(float(logits[b, h].max()), 0.0)
            literal = logits[b, h] + 0.7 * math.log(1 + 3.0) * peak * matrix
            torch.testing.assert_close(out[b, h], literal)


def test_special_keep_mask_drops_end_and_padding_inside_boxes_or_everywhere():
    masks = region_masks(BOXES, (2, 4))
    inside = masks.any(0)
    boxes = special_keep_mask(masks, [4, 5], 6, "boxes")
    everywhere = special_keep_mask(masks, [4, 5], 6, "all")
    for q in range(8):
        for j in range(6):
            assert boxes[q, j] == (j < 4 or not inside[q])
            assert everywhere[q, j] == (j < 4)
    assert special_keep_mask(masks, [4, 5], 6, "off") is None


def _call(batch: int, grid: tuple[int, int], step: int = 0) -> AttentionCall:
    layer = LayerInfo.from_name("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", True, 0)
    return AttentionCall(layer, None, RunState(step=step, timestep=500.0), batch, grid[0] * grid[1], grid)


@pytest.mark.parametrize("mask_special", ["off", "boxes", "all"])
def test_bias_control_in_the_engine_equals_literal_attention(mask_special):
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 2, 8, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    control = AttentionBiasLayout(BOXES, TOKENS, 0.5, lambda call: 2.0, 1, [4, 5], mask_special,
                                  rows=lambda call: slice(1, None))
    out = attend(_call(2, (2, 4)), [control], query, key, value)
    masks = region_masks(BOXES, (2, 4))
    matrix = paint_matrix(masks, TOKENS, 6)
    keep = special_keep_mask(masks, [4, 5], 6, mask_special)
    for b in range(2):
        logits = query[b] @ key[b].transpose(-1, -2) / 2.0  # (heads, q, k), sqrt(4) = 2
        if b == 1:  # only the chosen row is biased and masked
            if keep is not None:
                logits = logits.masked_fill(~keep, float("-inf"))
            peak = logits.amax(dim=(-2, -1), keepdim=True).clamp_min(0)
            logits = logits + 0.5 * math.log(3.0) * peak * matrix
        torch.testing.assert_close(out[b], logits.softmax(-1) @ value[b])


def test_bias_stops_after_its_active_steps_and_strength_zero_is_a_no_op():
    control = AttentionBiasLayout(BOXES, TOKENS, 0.5, lambda call: 2.0, 1)
    assert control.needs_probs(_call(2, (2, 4), step=0))
    assert not control.needs_probs(_call(2, (2, 4), step=1))
    assert control.logits_bias(_call(2, (2, 4), step=1), 8, 6) is None
    idle = AttentionBiasLayout(BOXES, TOKENS, 0.0, lambda call: 2.0, 10)
    assert not idle.needs_probs(_call(2, (2, 4))) and idle.logits_bias(_call(2, (2, 4)), 8, 6) is None
