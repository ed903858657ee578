"""Region-constrained cross-attention: the hand example, renormalisation, rows and tokens touched, stock identity."""

from __future__ import annotations

import math

import pytest
import torch

from attnctl.composer import RegionConstrainedCrossAttention, TokenRegion, conditional_rows, rca_keep_mask
from attnctl.core import AttentionCall, AttentionController, LayerInfo, RunState, attend, guidance_rows
from attnctl.models.tiny import build_tiny_sd_components

CROSS = LayerInfo("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", True, "down", 0, 1)
INSIDE = torch.tensor([[True, False], [False, False]])  # on a 2x2 grid: query 0 inside, queries 1-3 outside


def _call(batch: int, grid=(2, 2), branch=None) -> AttentionCall:
    rows = guidance_rows(1)  # one image: [uncond, cond] when the batch has two rows, [cond] otherwise
    return AttentionCall(CROSS, None, RunState(branch=branch, row_layout=rows), batch, grid[0] * grid[1], grid)


def _rca(tokens=(2,), region=INSIDE, **kwargs) -> RegionConstrainedCrossAttention:
    return RegionConstrainedCrossAttention([TokenRegion(tokens, lambda grid: region)], **kwargs)


def _probs(controls, logits_row: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """Attention probabilities for 4 identical queries with the given logits: head_dim 1, one-hot values."""
    query = torch.ones(batch, 1, 4, 1)
    key = logits_row.view(1, 1, -1, 1).expand(batch, 1, -1, 1)
    value = torch.eye(logits_row.numel()).expand(batch, 1, -1, -1)
    return attend(_call(batch), controls, query, key, value)


def test_hand_example_outside_rows_drop_the_subject_token_and_renormalise():
    # reference notes Sec. 10: tokens [SOT, "a", "dog", pad], logits [0, 0, ln 2, 0]
    probs = _probs([_rca()], torch.tensor([0.0, 0.0, math.log(2.0), 0.0]))[0, 0]
    torch.testing.assert_close(probs[0], torch.tensor([0.2, 0.2, 0.4, 0.2]))
    for row in probs[1:]:
        torch.testing.assert_close(row, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))


def test_renormalisation_matches_the_closed_form_and_keeps_other_tokens_ratios():
    torch.manual_seed(0)
    logits = torch.randn(6)
    stock = _probs([], logits)[0, 0, 1]
    constrained = _probs([_rca(tokens=(2, 4))], logits)[0, 0, 1]
    expected = stock.clone()
    expected[[2, 4]] = 0
    expected = expected / (1 - stock[[2, 4]].sum())  # p' = p / (1 - sum of the subject tokens' p)
    torch.testing.assert_close(constrained, expected)
    others = [0, 1, 3, 5]
    torch.testing.assert_close(constrained[others] / constrained[0], stock[others] / stock[0])


def test_only_the_conditional_rows_are_constrained():
    logits = torch.tensor([0.0, 0.5, 1.0, -0.5])
    stock = _probs([], logits, batch=2)
    constrained = _probs([_rca(rows=conditional_rows)], logits, batch=2)
    assert torch.equal(constrained[0], stock[0])  # unconditional row: the stock result
    assert constrained[1, 0, 1:, 2].eq(0).all()


def test_keep_mask_is_none_when_nothing_is_dropped():
    everywhere = torch.ones(4, dtype=torch.bool)
    assert rca_keep_mask([((2,), everywhere)], 5) is None
    assert rca_keep_mask([((), INSIDE.view(-1))], 5) is None
    keep = rca_keep_mask([((2,), INSIDE.view(-1)), ((3, 4), ~INSIDE.view(-1))], 6)
    assert keep[:, [0, 1, 5]].all()
    assert torch.equal(keep[:, 2], INSIDE.view(-1)) and torch.equal(keep[:, 3], ~INSIDE.view(-1))


def test_the_control_only_acts_on_cross_attention_of_its_branch():
    rca = _rca(branch="generator")
    assert rca.applies_to(_call(1, branch="generator"))
    assert not rca.applies_to(_call(1, branch="correlation"))
    self_call = AttentionCall(LayerInfo("x.attn1.processor", False, "down", 0, 0), None, RunState(), 1,
                              4, (2, 2))
    assert not rca.applies_to(self_call)
    with pytest.raises(ValueError, match="must be >= 1"):
        _rca(tokens=(0, 2))


@pytest.fixture(scope="module")
def unet():
    return build_tiny_sd_components(seed=0)["unet"].eval().requires_grad_(False)


def _unet_out(unet, controls=None):
    torch.manual_seed(1)
    sample, context = torch.randn(2, 4, 16, 12), torch.randn(2, 77, 16)
    if controls is None:
        return unet(sample, 500, context).sample
    with AttentionController(controls).installed(unet):
        return unet(sample, 500, context).sample


def test_all_ones_region_equals_the_stock_processor_exactly(unet):
    stock = _unet_out(unet)
    everywhere = RegionConstrainedCrossAttention([TokenRegion((2, 3), lambda grid: torch.ones(grid, dtype=bool))])
    assert torch.equal(_unet_out(unet, [everywhere]), stock)
    # the same all-True mask actually fed to SDPA runs another kernel: equal up to float rounding
    forced = _rca(tokens=(2, 3), region=None)
    forced.keep_mask = lambda grid, key_len: torch.ones(grid[0] * grid[1], key_len, dtype=torch.bool)
    torch.testing.assert_close(_unet_out(unet, [forced]), stock, rtol=1e-5, atol=1e-6)


def test_a_real_region_changes_the_output_on_a_non_square_latent(unet):
    def left_half(grid):
        mask = torch.zeros(grid, dtype=torch.bool)
        mask[:, : grid[1] // 2] = True
        return mask

    rca = RegionConstrainedCrossAttention([TokenRegion((2, 3), left_half)])
    out = _unet_out(unet, [rca])
    assert not torch.allclose(out, _unet_out(unet))
    assert set(key[0] for key in rca._masks) == {(16, 12), (8, 6)}  # one mask per token grid of the 16x12 latent
