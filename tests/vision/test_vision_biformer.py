"""Bi-level routing attention: dense-mask oracle, top-k = all regions = full attention, routing, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.biformer import (
    BiLevelRoutingAttention,
    bilevel_routing_attention,
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
    reference = bilevel_routing_attention(q, k, v, GRID, side, topk, reference=True)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


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
    routed = BiLevelRoutingAttention(
        dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=0, qk_scale=8**-0.5
    )
    full = FullGridAttention(dim=16, num_heads=2)
    renamed = {"qkv.qkv.weight": "qkv.weight", "qkv.qkv.bias": "qkv.bias", "wo.weight": "proj.weight"}
    full.load_state_dict({renamed.get(k, k.replace("wo.", "proj.")): v for k, v in routed.state_dict().items()})
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(routed(x), full(x), rtol=1e-5, atol=1e-6)


def test_lce_adds_a_depthwise_convolution_of_the_values():
    torch.manual_seed(0)
    routed = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=3)
    plain = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=4, lce_kernel=0)
    plain.load_state_dict({k: v for k, v in routed.state_dict().items() if not k.startswith("lepe")})
    x = torch.randn(1, 4, 4, 16)
    value = routed.qkv(x).chunk(3, dim=-1)[2].permute(0, 3, 1, 2)
    lce = torch.nn.functional.conv2d(value, routed.lepe.weight, routed.lepe.bias, padding=1, groups=16)
    expected = plain(x) + lce.permute(0, 2, 3, 1) @ routed.wo.weight.T
    torch.testing.assert_close(routed(x), expected, rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="topk=5 exceeds the number of regions 4"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=5)
    with pytest.raises(ValueError, match="lce_kernel must be 0 \\(off\\) or an odd positive size, got 4"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=1, lce_kernel=4)
    with pytest.raises(ValueError, match="regions_per_side=3 must divide the token grid 4x6"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=3, topk=1)(torch.randn(1, 4, 6, 16))
    with pytest.raises(ValueError, match="qk_scale must be positive"):
        BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=1, qk_scale=0.0)
    with pytest.raises(ValueError, match="topk must be a positive integer, got 0"):
        bilevel_routing_attention(*_qkv(), GRID, 2, 0)


def _release_state_dict(dim, kernel=5, seed=0):
    """Random weights under the BiFormer release's keys and shapes (Zhu et al. 2023, Sec. 3.2, with its code's
    names): fused q/k/v projection ``qkv.qkv`` (3 * dim, dim) with bias, depthwise LCE ``lepe`` (dim, 1, 5, 5)
    with bias, output projection ``wo``; routing has no parameters."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "qkv.qkv.weight": (3 * dim, dim),
        "qkv.qkv.bias": (3 * dim,),
        "lepe.weight": (dim, 1, kernel, kernel),
        "lepe.bias": (dim,),
        "wo.weight": (dim, dim),
        "wo.bias": (dim,),
    }
    return {key: torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in shapes.items()}


def _literal_biformer(x, weights, num_heads, side, topk):
    """Eq. 2-5 token by token: region means of q and k, each region's top-k regions by affinity, each query
    over the routed regions' tokens with softmax(q k * dim**-0.5) per head (the release's scale), plus the
    5x5 depthwise convolution of v written as a sum over offsets, then the output projection."""
    batch, height, width, dim = x.shape
    head_dim, rh, rw = dim // num_heads, height // side, width // side
    q, k, v = (x @ weights["qkv.qkv.weight"].T + weights["qkv.qkv.bias"]).chunk(3, dim=-1)

    def region_of(r, c):
        return r // rh * side + c // rw

    out = torch.zeros_like(q)
    for b in range(batch):
        means_q = torch.stack([q[b, i * rh : (i + 1) * rh, j * rw : (j + 1) * rw].mean((0, 1))
                               for i in range(side) for j in range(side)])
        means_k = torch.stack([k[b, i * rh : (i + 1) * rh, j * rw : (j + 1) * rw].mean((0, 1))
                               for i in range(side) for j in range(side)])
        routed = (means_q @ means_k.T).topk(topk, dim=-1).indices
        for r in range(height):
            for c in range(width):
                keep = [(i, j) for i in range(height) for j in range(width)
                        if region_of(i, j) in routed[region_of(r, c)].tolist()]
                keys = torch.stack([k[b, i, j] for i, j in keep])
                values = torch.stack([v[b, i, j] for i, j in keep])
                for h in range(num_heads):
                    ch = slice(h * head_dim, (h + 1) * head_dim)
                    attention = (keys[:, ch] @ q[b, r, c, ch] * dim**-0.5).softmax(0)
                    out[b, r, c, ch] = attention @ values[:, ch]
    kernel = weights["lepe.weight"].shape[-1]
    padded = torch.nn.functional.pad(v, (0, 0, kernel // 2, kernel // 2, kernel // 2, kernel // 2))
    lce = weights["lepe.bias"].expand_as(v).clone()
    for i in range(kernel):
        for j in range(kernel):
            lce += weights["lepe.weight"][:, 0, i, j] * padded[:, i : i + height, j : j + width]
    return (out + lce) @ weights["wo.weight"].T + weights["wo.bias"]


@pytest.mark.parametrize("topk", [1, 3])
def test_release_state_dict_loads_unchanged_and_gives_the_literal_output(topk):
    weights = _release_state_dict(16)
    module = BiLevelRoutingAttention(dim=16, num_heads=2, regions_per_side=2, topk=topk).double()
    module.load_state_dict(weights, strict=True)  # default: the release's scale, LCE kernel and names
    x = torch.randn(1, 6, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(module(x), _literal_biformer(x, weights, 2, 2, topk), rtol=0, atol=1e-10)
