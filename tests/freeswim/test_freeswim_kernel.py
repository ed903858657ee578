"""The window-attention kernel (attnctl.core.window_attention) against its naive masked-softmax oracle."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import attnctl.core.window_tiles as window_tiles
from attnctl.core.window_attention import available_backends, default_backend, default_tile, window_attention
from attnctl.core.window_tiles import tile_plan
from attnctl.core.windows import window_keep_mask

TOLERANCE = 2e-6  # fp32: blocks change the summation order of the softmax, nothing else


def naive_masked_softmax(query, key, value, grid, window, scale=None):
    """softmax(q k^T * scale + log(mask)) v written out: the definition, independent of SDPA."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query @ key.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~window_keep_mask(grid, window), float("-inf"))
    return logits.softmax(dim=-1) @ value


def qkv(grid, batch=2, heads=3, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, math.prod(grid), dim)
    return [torch.randn(shape, generator=generator) for _ in range(3)]


CASES = [
    # grid, window, tile: odd and even grids, grids not divisible by the tile, 1-D / 2-D / 3-D, windowed time
    ((3, 10, 13), (None, 5, 7), (3, 4, 4)),
    ((2, 9, 9), (None, 5, 5), (2, 2, 3)),
    ((3, 12, 16), (None, 7, 9), (3, 4, 4)),
    ((2, 11, 7), (None, 4, 6), (2, 3, 5)),
    ((4, 7, 9), (2, 3, 5), (2, 2, 2)),
    ((1, 5, 6), (None, 5, 5), (1, 2, 2)),
    ((9, 11), (4, 6), (3, 4)),
    ((6, 6), (6, 3), (2, 4)),
    ((17,), (5,), (4,)),
    ((23,), (8,), (7,)),
]


@pytest.mark.parametrize(("grid", "window", "tile"), CASES)
def test_tiled_kernel_matches_the_naive_reference(grid, window, tile):
    query, key, value = qkv(grid)
    expected = naive_masked_softmax(query, key, value, grid, window)
    out = window_attention(query, key, value, grid, window, backend="tiled", tile=tile)
    torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("grid", "window", "tile"), CASES[:4])
def test_default_tile_and_scale_match_the_reference(grid, window, tile):
    query, key, value = qkv(grid, seed=1)
    expected = naive_masked_softmax(query, key, value, grid, window, scale=0.3)
    torch.testing.assert_close(window_attention(query, key, value, grid, window, scale=0.3), expected,
                               atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(
        window_attention(query, key, value, grid, window, scale=0.3, backend="reference"), expected,
        atol=TOLERANCE, rtol=0,
    )


def test_strided_heads_inner_layout_and_split_bands(monkeypatch):
    grid, window = (3, 10, 13), (None, 5, 7)
    generator = torch.Generator().manual_seed(2)
    # diffusers' (batch, tokens, heads, dim) layout viewed as (batch, heads, tokens, dim), as Wan passes it
    query, key, value = (torch.randn(2, 390, 3, 8, generator=generator).transpose(1, 2) for _ in range(3))
    expected = naive_masked_softmax(query, key, value, grid, window)
    torch.testing.assert_close(window_attention(query, key, value, grid, window), expected, atol=TOLERANCE, rtol=0)
    monkeypatch.setattr(window_tiles, "BAND_BYTES", 1)  # one tile row per SDPA call
    torch.testing.assert_close(window_attention(query, key, value, grid, window), expected, atol=TOLERANCE, rtol=0)


def test_window_covering_the_grid_is_exactly_sdpa():
    grid = (2, 5, 6)
    query, key, value = qkv(grid)
    stock = F.scaled_dot_product_attention(query, key, value)
    for backend in ("tiled", "reference"):
        assert torch.equal(window_attention(query, key, value, grid, (None, 5, 6), backend=backend), stock)


def naive_window_lse(query, key, grid, window, scale=None):
    """log sum_j exp(q k_j * scale) over each query's window: the definition."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query @ key.transpose(-1, -2)) * scale
    return logits.masked_fill(~window_keep_mask(grid, window), float("-inf")).logsumexp(dim=-1)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(("grid", "window", "tile"), [CASES[0], CASES[4], CASES[8], ((2, 5, 6), (None, 5, 6), None)])
def test_return_lse_gives_the_window_log_sum_exp_and_the_same_output(grid, window, tile, monkeypatch):
    import attnctl.core.window_flex as window_flex

    query, key, value = qkv(grid, seed=3)
    expected_lse = naive_window_lse(query, key, grid, window, scale=0.3)
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(window_flex, "_compiled_flex", lambda: flex_attention)  # eager flex: no compile in unit tests
    for backend in ("tiled", "reference", "flex"):
        out, lse = window_attention(query, key, value, grid, window, scale=0.3, backend=backend, tile=tile,
                                    return_lse=True)
        assert lse.shape == query.shape[:-1] and lse.dtype == torch.float32
        torch.testing.assert_close(lse, expected_lse, atol=TOLERANCE, rtol=0)
        assert torch.equal(out, window_attention(query, key, value, grid, window, scale=0.3, backend=backend,
                                                 tile=tile))
    with pytest.raises(ValueError, match="return_lse=True is not available with backend='natten'"):
        window_attention(query, key, value, grid, window, backend="natten", return_lse=True)


def test_plan_has_few_runs_whatever_the_grid_size():
    small, large = tile_plan((8, 32, 32), (8, 15, 15), (8, 4, 4)), tile_plan((8, 64, 64), (8, 15, 15), (8, 4, 4))
    assert len(small.combos()) == len(large.combos()) == 9  # border, interior, border on each spatial axis
    assert small.query_tile == 8 * 4 * 4
    # (tiles, rectangle rows): at the borders every window of a tile is the same 15 rows; inside, 4 - 1 + 15
    assert [(run.count, run.rect) for run in small.axes[1].runs] == [(2, 15), (4, 18), (2, 15)]
    assert [(run.count, run.rect) for run in large.axes[1].runs] == [(2, 15), (12, 18), (2, 15)]
    assert [run.keep.all().item() for run in small.axes[1].runs] == [True, False, True]


def test_the_kernel_never_materialises_a_tokens_squared_tensor(monkeypatch):
    grid, window = (2, 24, 24), (None, 5, 5)
    tokens = math.prod(grid)
    largest = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        largest.append(query.shape[-2] * key.shape[-2] if attn_mask is None else attn_mask.numel())
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(window_tiles.F, "scaled_dot_product_attention", recording_sdpa)
    query, key, value = qkv(grid, batch=1, heads=1)
    window_attention(query, key, value, grid, window, backend="tiled")
    assert largest and max(largest) < tokens * tokens / 20


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_uncompiled_matches_the_reference():
    from attnctl.core.window_flex import flex_window_attention

    for grid, window in [((3, 10, 13), (3, 5, 7)), ((4, 7, 9), (2, 3, 5)), ((300,), (17,))]:
        query, key, value = qkv(grid, batch=1, heads=2)
        expected = naive_masked_softmax(query, key, value, grid, window)
        out = flex_window_attention(query, key, value, grid, window, compile=False)
        torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_a_failed_lse_compile_does_not_stop_compiling_plain_calls(monkeypatch):
    """Inductor's CPU flex kernel cannot return the lse: that failure must not turn plain calls eager."""
    from torch.nn.attention.flex_attention import flex_attention

    import attnctl.core.window_flex as window_flex

    compiled_calls = []

    def compiled(*args, **kwargs):
        if "return_aux" in kwargs or "return_lse" in kwargs:
            raise NotImplementedError("return_lse is not supported yet")
        compiled_calls.append(kwargs)
        return flex_attention(*args, **kwargs)

    monkeypatch.setattr(window_flex, "_COMPILE_FAILED", {})
    monkeypatch.setattr(window_flex, "_compiled_flex", lambda: compiled)
    grid, window = (2, 6, 7), (2, 3, 5)
    query, key, value = qkv(grid, batch=1, heads=2)
    with pytest.warns(UserWarning, match="could not be compiled"):
        out, lse = window_flex.flex_window_attention(query, key, value, grid, window, return_lse=True)
    torch.testing.assert_close(lse, naive_window_lse(query, key, grid, window), atol=TOLERANCE, rtol=0)
    window_flex.flex_window_attention(query, key, value, grid, window)
    assert len(compiled_calls) == 1 and window_flex.flex_compile_error()


@pytest.mark.slow
def test_flex_backend_compiled_matches_the_reference():
    grid, window = (2, 20, 30), (2, 7, 9)
    query, key, value = qkv(grid, batch=1, heads=2)
    out = window_attention(query, key, value, grid, window, backend="flex")
    torch.testing.assert_close(out, naive_masked_softmax(query, key, value, grid, window), atol=TOLERANCE, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("natten") is None, reason="natten is not installed")
def test_natten_backend_matches_the_reference():
    grid, window = (3, 10, 13), (3, 5, 7)
    query, key, value = qkv(grid, batch=1, heads=2, dim=16)
    out = window_attention(query, key, value, grid, window, backend="natten")
    torch.testing.assert_close(out, naive_masked_softmax(query, key, value, grid, window), atol=1e-5, rtol=0)


def test_natten_backend_hands_natten_its_heads_last_layout(monkeypatch):
    """Without NATTEN installed: a stand-in with na3d's contract checks the layout and kernel-size plumbing."""
    grid, window = (2, 6, 7), (2, 3, 5)
    calls = []

    def na3d(query, key, value, kernel_size, scale=None):
        calls.append((tuple(query.shape), tuple(kernel_size)))
        batch, heads, dim = query.shape[0], query.shape[-2], query.shape[-1]
        # (batch, *grid, heads, dim) -> (batch, heads, tokens, dim) and back
        flat = [t.reshape(batch, -1, heads, dim).transpose(1, 2) for t in (query, key, value)]
        out = naive_masked_softmax(*flat, grid, kernel_size, scale)
        return out.transpose(1, 2).reshape(query.shape)

    monkeypatch.setitem(sys.modules, "natten", types.SimpleNamespace(na1d=None, na2d=None, na3d=na3d))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    query, key, value = qkv(grid, batch=2, heads=3)
    out = window_attention(query, key, value, grid, window, backend="natten", scale=0.2)
    assert calls == [((2, 2, 6, 7, 3, 8), (2, 3, 5))]
    torch.testing.assert_close(out, naive_masked_softmax(query, key, value, grid, window, 0.2), atol=TOLERANCE, rtol=0)


def test_default_tile_keeps_tiles_small_and_at_least_32_queries():
    assert default_tile((8, 64, 64), (8, 15, 15)) == (8, 8, 1)  # all frames, 8 rows, 1 column
    assert default_tile((21, 68, 120), (21, 31, 53)) == (21, 8, 1)
    assert default_tile((64, 64), (15, 15)) == (8, 4)
    assert default_tile((100,), (9,)) == (32,)
    assert default_tile((2, 3, 5), (2, 3, 3)) == (2, 3, 5)


def test_backend_choice(monkeypatch):
    assert default_backend("cpu") == "tiled"
    import attnctl.core.window_attention as module

    monkeypatch.setattr(module, "natten_gpu_available", lambda: True)
    assert default_backend("cuda") == "natten" and default_backend("cuda", return_lse=True) == "tiled"
    monkeypatch.setattr(module, "natten_gpu_available", lambda: False)
    assert default_backend("cuda") == "tiled"
    assert {"reference", "tiled", "flex"} <= set(available_backends())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window=(None, 11, 3)), r"window\[1\]=11 is larger than grid\[1\]=10"),
        (dict(backend="cuda-magic"), "backend='cuda-magic' is not one of"),
        (dict(tile=(3, 4)), "tile=.* one positive integer per grid axis"),
        (dict(grid=(3, 10, 12)), "query has 390 tokens but grid"),
    ],
)
def test_bad_input_raises_value_errors(kwargs, message):
    grid = (3, 10, 13)
    query, key, value = qkv(grid)
    arguments = dict(grid=grid, window=(None, 5, 7)) | kwargs
    with pytest.raises(ValueError, match=message):
        window_attention(query, key, value, **arguments)


def test_reused_scratch_buffers_never_leak_between_calls_or_threads():
    """The CPU band and query copies live in per-thread buffers reused across calls: interleaved grids, dtypes and
    threads must each still match the oracle."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [CASES[0], CASES[2], CASES[0], CASES[6]]

    def run(case):
        grid, window, tile = case
        query, key, value = qkv(grid, seed=len(grid))
        out = window_attention(query, key, value, grid, window, backend="tiled", tile=tile)
        return out, naive_masked_softmax(query, key, value, grid, window)

    for out, expected in map(run, cases):
        torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for out, expected in pool.map(run, cases * 2):
            torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)
    grid, window, tile = CASES[0]
    query, key, value = (t.double() for t in qkv(grid))
    out = window_attention(query, key, value, grid, window, backend="tiled", tile=tile)
    torch.testing.assert_close(out, naive_masked_softmax(query, key, value, grid, window), atol=1e-12, rtol=0)
