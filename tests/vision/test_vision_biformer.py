"""Bi-level routing attention: dense-mask oracle, top-k = all regions = full attention, routing, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.biformer import (
    BiLevelRoutingAttention,
    bilevel_routing_attention,
    bilevel_routing_attention_reference,
    route_regions,
    routing_mask,
)
from attnctl.vision.grid import FullGridAttention, naive_attention

GRID = (8, 12)


def _qkv(seed=0):
    torch.manual_seed(seed)
    return torch.randn(3, 2, 2, GRID[0] * GRID[1], 8).unbind(0)


@pytest.mark.parametrize(("side", "topk"), [(2, 1), (2, 3), (4, 5), (4, 16)])
def test_matches_the_dense_mask_oracle(side, topk):
    q, k, v = _qkv()
    out = bilevel_routing_attention(q, k, v, GRID, side, topk)
    torch.testing.assert_close(
        out, bilevel_routing_attention_reference(q, k, v, GRID, side, topk), rtol=1e-5, atol=1e-6
    )


def test_topk_equal_to_all_regions_is_full_attention():
    q, k, v = _qkv()
    torch.testing.assert_close(
        bilevel_routing_attention(q, k, v, GRID, 4, 16), naive_attention(q, k, v), rtol=1e-5, atol=1e-6
    )


def test_routing_picks_the_regions_with_the_largest_mean_affinity():
    q, k, _ = _qkv()
    index = route_regions(q, k, GRID, 2, 2)  # regions of 4x6 tokens
    region_mean = q.reshape(2, 2, 2, 4, 2, 6, 8).mean(dim=(3, 5)).permute(0, 2, 3, 1, 4).reshape(2, 4, 16)
    key_mean = k.reshape(2, 2, 2, 4, 2, 6, 8).mean(dim=(3, 5)).permute(0, 2, 3, 1, 4).reshape(2, 4, 16)
    expected = (region_mean @ key_mean.transpose(1, 2)).topk(2, dim=-1).indices
    assert torch.equal(index, expected)
    mask = routing_mask(index, GRID, 2)
    assert mask.shape == (2, 96, 96)
    assert mask.sum(-1).eq(2 * 24).all()  # every query sees exactly topk regions of 24 tokens


def test_module_without_lce_equals_full_attention_with_all_regions():
    torch.manual_seed(0)
    routed = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=0)
    full = FullGridAttention(dim=16, num_heads=2)
    full.load_state_dict(routed.state_dict())
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(routed(x), full(x), rtol=1e-5, atol=1e-6)


def test_lce_adds_a_depthwise_convolution_of_the_values():
    torch.manual_seed(0)
    routed = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=3)
    plain = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=0)
    plain.load_state_dict({k: v for k, v in routed.state_dict().items() if not k.startswith("lce")})
    x = torch.randn(1, 4, 4, 16)
    value = routed.qkv(x).chunk(3, dim=-1)[2].permute(0, 3, 1, 2)
    lce = torch.nn.functional.conv2d(value, routed.lce.weight, routed.lce.bias, padding=1, groups=16)
    expected = plain(x) + lce.permute(0, 2, 3, 1) @ routed.proj.weight.T
    torch.testing.assert_close(routed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_and_dtype(dtype):
    module = BiLevelRoutingAttention(dim=16, num_heads=4, regions_per_side=2, topk=2).to(dtype)
    out = module(torch.randn(2, 4, 6, 16, dtype=dtype))
    assert out.shape == (2, 4, 6, 16) and out.dtype == dtype


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="topk=5 exceeds the number of regions 4"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=5)
    with pytest.raises(ValueError, match="lce_kernel must be 0 \\(off\\) or an odd positive size, got 4"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=1, lce_kernel=4)
    with pytest.raises(ValueError, match="regions_per_side=3 must divide the token grid 4x6"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=3, topk=1)(torch.randn(1, 4, 6, 16))
    with pytest.raises(ValueError, match="topk must be a positive integer, got 0"):
        bilevel_routing_attention(*_qkv(), GRID, 2, 0)
