"""HiLo attention: reduction to plain multi-head attention, Hi-Fi locality, Lo-Fi pooling, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.grid import FullGridAttention, merge_heads, naive_attention, split_heads
from attnctl.vision.hilo import HiLoAttention


def _as_plain_attention(hilo: HiLoAttention) -> FullGridAttention:
    """A plain MHSA with HiLo's weights: Hi-Fi heads first, then Lo-Fi; block-diagonal output projection."""
    plain = FullGridAttention(hilo.dim, hilo.num_heads, qkv_bias=False)
    hq, hk, hv = hilo.hi_qkv.weight.chunk(3)
    lk, lv = hilo.lo_kv.weight.chunk(2)
    with torch.no_grad():
        plain.qkv.weight.copy_(torch.cat([hq, hilo.lo_q.weight, hk, lk, hv, lv]))
        plain.proj.weight.copy_(torch.block_diag(hilo.hi_proj.weight, hilo.lo_proj.weight))
        plain.proj.bias.copy_(torch.cat([hilo.hi_proj.bias, hilo.lo_proj.bias]))
    return plain


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_pool_one_and_window_covering_the_grid_is_plain_multi_head_attention(alpha):
    torch.manual_seed(0)
    hilo = HiLoAttention(dim=32, num_heads=4, window_size=8, alpha=alpha, pool_size=1)
    x = torch.randn(2, 8, 8, 32)
    torch.testing.assert_close(hilo(x), _as_plain_attention(hilo)(x), rtol=1e-5, atol=1e-6)


def test_head_split_follows_alpha_rounded_down():
    hilo = HiLoAttention(dim=24, num_heads=6, alpha=0.4)
    assert (hilo.hi_heads, hilo.lo_heads) == (4, 2)
    assert not hasattr(HiLoAttention(dim=24, num_heads=6, alpha=0.0), "lo_q")
    assert not hasattr(HiLoAttention(dim=24, num_heads=6, alpha=1.0), "hi_qkv")


def test_hifi_heads_only_see_their_own_window():
    torch.manual_seed(0)
    hilo = HiLoAttention(dim=16, num_heads=2, window_size=4, alpha=0.0)
    x = torch.randn(1, 8, 8, 16)
    changed = x.clone()
    changed[0, 0, 0] += 1.0  # a token of the top-left window
    before, after = hilo(x), hilo(changed)
    assert not torch.allclose(before[0, :4, :4], after[0, :4, :4])
    torch.testing.assert_close(before[0, 4:], after[0, 4:])
    torch.testing.assert_close(before[0, :4, 4:], after[0, :4, 4:])


def test_lofi_heads_attend_to_average_pooled_keys_and_values():
    torch.manual_seed(0)
    hilo = HiLoAttention(dim=16, num_heads=2, window_size=2, alpha=1.0)
    x = torch.randn(2, 4, 6, 16)
    pooled = torch.stack(
        [x[:, r : r + 2, c : c + 2].mean(dim=(1, 2)) for r in (0, 2) for c in (0, 2, 4)], dim=1
    )
    query = split_heads(hilo.lo_q(x), 2)
    key, value = (split_heads(t, 2) for t in hilo.lo_kv(pooled).chunk(2, dim=-1))
    expected = hilo.lo_proj(merge_heads(naive_attention(query, key, value), (4, 6)))
    torch.testing.assert_close(hilo(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_and_dtype(dtype):
    hilo = HiLoAttention(dim=32, num_heads=4, window_size=2).to(dtype)
    out = hilo(torch.randn(2, 6, 4, 32, dtype=dtype))
    assert out.shape == (2, 6, 4, 32) and out.dtype == dtype


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\].*got 1.5"):
        HiLoAttention(dim=32, num_heads=4, alpha=1.5)
    with pytest.raises(ValueError, match="pool_size must be a positive integer, got 0"):
        HiLoAttention(dim=32, num_heads=4, pool_size=0)
    with pytest.raises(ValueError, match="window_size=4 must divide the token grid 6x8"):
        HiLoAttention(dim=32, num_heads=4, window_size=4, pool_size=2)(torch.randn(1, 6, 8, 32))
    with pytest.raises(ValueError, match="pool_size=3 must divide the token grid 4x4"):
        HiLoAttention(dim=32, num_heads=4, window_size=2, pool_size=3)(torch.randn(1, 4, 4, 32))
