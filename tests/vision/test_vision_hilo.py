"""HiLo attention: reduction to plain multi-head attention, Hi-Fi locality, Lo-Fi pooling, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.grid import FullGridAttention, merge_heads, naive_attention, split_heads
from attnctl.vision.hilo import HiLoAttention


def _as_plain_attention(hilo: HiLoAttention) -> FullGridAttention:
    """A plain MHSA with HiLo's weights: Hi-Fi heads first, then Lo-Fi; block-diagonal output projection."""
    plain = FullGridAttention(hilo.dim, hilo.num_heads, qkv_bias=False)
    hq, hk, hv = hilo.h_qkv.weight.chunk(3)
    lk, lv = hilo.l_kv.weight.chunk(2)
    with torch.no_grad():
        plain.qkv.weight.copy_(torch.cat([hq, hilo.l_q.weight, hk, lk, hv, lv]))
        plain.proj.weight.copy_(torch.block_diag(hilo.h_proj.weight, hilo.l_proj.weight))
        plain.proj.bias.copy_(torch.cat([hilo.h_proj.bias, hilo.l_proj.bias]))
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
    assert not hasattr(HiLoAttention(dim=24, num_heads=6, alpha=0.0), "l_q")
    assert not hasattr(HiLoAttention(dim=24, num_heads=6, alpha=1.0), "h_qkv")


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
    query = split_heads(hilo.l_q(x), 2)
    key, value = (split_heads(t, 2) for t in hilo.l_kv(pooled).chunk(2, dim=-1))
    expected = hilo.l_proj(merge_heads(naive_attention(query, key, value), (4, 6)))
    torch.testing.assert_close(hilo(x), expected, rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\].*got 1.5"):
        HiLoAttention(dim=32, num_heads=4, alpha=1.5)
    with pytest.raises(ValueError, match="pool_size must be a positive integer, got 0"):
        HiLoAttention(dim=32, num_heads=4, pool_size=0)
    with pytest.raises(ValueError, match="window_size=4 must divide the token grid 6x8"):
        HiLoAttention(dim=32, num_heads=4, window_size=4, pool_size=2)(torch.randn(1, 6, 8, 32))
    with pytest.raises(ValueError, match="pool_size=3 must divide the token grid 4x4"):
        HiLoAttention(dim=32, num_heads=4, window_size=2, pool_size=3)(torch.randn(1, 4, 4, 32))


def _release_state_dict(dim, num_heads, window_size, alpha, seed=0):
    """Random weights under the LITv2 release's keys and shapes (Pan et al. 2022, Sec. 3.2): Hi-Fi ``h_qkv``
    (3 * h_dim, dim) and ``h_proj``; Lo-Fi ``l_q`` (l_dim, dim), ``l_kv`` (2 * l_dim, dim) and ``l_proj``;
    qkv without bias; window_size 1 makes every head Lo-Fi."""
    generator = torch.Generator().manual_seed(seed)
    head_dim = dim // num_heads
    lo_heads = num_heads if window_size == 1 else int(num_heads * alpha)
    h_dim, l_dim = (num_heads - lo_heads) * head_dim, lo_heads * head_dim
    shapes = {}
    if h_dim:
        shapes |= {"h_qkv.weight": (3 * h_dim, dim), "h_proj.weight": (h_dim, h_dim), "h_proj.bias": (h_dim,)}
    if l_dim:
        shapes |= {
            "l_q.weight": (l_dim, dim),
            "l_kv.weight": (2 * l_dim, dim),
            "l_proj.weight": (l_dim, l_dim),
            "l_proj.bias": (l_dim,),
        }
    return {key: torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in shapes.items()}


def _literal_hilo(x, weights, num_heads, window_size):
    """HiLo written out token by token: each Hi-Fi query over its window's tokens, each Lo-Fi query over the
    window-averaged grid (the whole grid for window_size 1), softmax(q k / sqrt(head_dim)) v per head."""
    batch, height, width, dim = x.shape
    head_dim = dim // num_heads
    parts = []
    if "h_qkv.weight" in weights:
        q, k, v = (x @ weights["h_qkv.weight"].T).chunk(3, dim=-1)
        out = torch.zeros_like(q)
        s = window_size
        for b in range(batch):
            for r in range(height):
                for c in range(width):
                    rows, cols = slice(r // s * s, r // s * s + s), slice(c // s * s, c // s * s + s)
                    for h in range(q.shape[-1] // head_dim):
                        ch = slice(h * head_dim, (h + 1) * head_dim)
                        keys = k[b, rows, cols, ch].reshape(-1, head_dim)
                        values = v[b, rows, cols, ch].reshape(-1, head_dim)
                        weights_ = (keys @ q[b, r, c, ch] * head_dim**-0.5).softmax(0)
                        out[b, r, c, ch] = weights_ @ values
        parts.append(out @ weights["h_proj.weight"].T + weights["h_proj.bias"])
    if "l_q.weight" in weights:
        s = window_size
        pooled = x.reshape(batch, height // s, s, width // s, s, dim).mean(dim=(2, 4)).reshape(batch, -1, dim)
        q = x @ weights["l_q.weight"].T
        k, v = (pooled @ weights["l_kv.weight"].T).chunk(2, dim=-1)
        out = torch.zeros_like(q)
        for h in range(q.shape[-1] // head_dim):
            ch = slice(h * head_dim, (h + 1) * head_dim)
            logits = torch.einsum("bijd,bnd->bijn", q[..., ch], k[..., ch]) * head_dim**-0.5
            out[..., ch] = torch.einsum("bijn,bnd->bijd", logits.softmax(-1), v[..., ch])
        parts.append(out @ weights["l_proj.weight"].T + weights["l_proj.bias"])
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize(("window_size", "alpha"), [(2, 0.5), (2, 0.25), (1, 0.5), (3, 0.0)])
def test_release_state_dict_loads_unchanged_and_gives_the_literal_output(window_size, alpha):
    weights = _release_state_dict(24, 4, window_size, alpha)
    hilo = HiLoAttention(24, 4, window_size=window_size, alpha=alpha).double()
    hilo.load_state_dict(weights, strict=True)
    x = torch.randn(2, 6, 6, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hilo(x), _literal_hilo(x, weights, 4, window_size), rtol=0, atol=1e-10)


def test_window_size_one_makes_every_head_global_as_litv2():
    hilo = HiLoAttention(dim=16, num_heads=4, window_size=1, alpha=0.5)
    assert (hilo.hi_heads, hilo.lo_heads) == (0, 4)
    x = torch.randn(1, 4, 4, 16)
    changed = x.clone()
    changed[0, 3, 3] += 1.0  # a far token changes every output: no token attends to itself alone
    assert not torch.allclose(hilo(x)[0, 0, 0], hilo(changed)[0, 0, 0])
