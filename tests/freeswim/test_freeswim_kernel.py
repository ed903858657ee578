"""The window-attention kernel (attnctl.core.window_attention) against its naive masked-softmax oracle."""

from __future__ import annotations

import importlib.util
import math
import platform
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnctl.core.window_cpu as window_cpu
import attnctl.core.window_tiles as window_tiles
from attnctl.core.window_attention import available_backends, default_tile, window_attention
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
    import attnctl.core.window_attention as module

    video, image = ((8, 6, 20), (8, 3, 15)), ((9, 20), (4, 15))
    query, key, value = qkv(video[0], batch=1, heads=1)
    fused = "cpu" if module.cpu_kernel_error() is None else "tiled"
    assert module.default_backend(query, key, value, *video) == fused  # all 8 frames in every window
    assert module.default_backend(query, key, value, (8, 6, 20), (4, 3, 15)) == "tiled"  # windowed frames
    assert module.default_backend(query, key, value, (8, 6, 20), (8, 3, 5)) == "tiled"  # 5 of 16 lanes
    assert module.default_backend(*(t.double() for t in (query, key, value)), *video) == "tiled"
    assert module.default_backend(*qkv(image[0], batch=1, heads=1), *image) == "tiled"
    cuda = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setattr(module, "natten_gpu_available", lambda: True)
    monkeypatch.setattr(module, "unsupported", lambda *tensors: "it runs on CPU tensors")
    assert module.default_backend(cuda, cuda, cuda, *video) == "natten"
    assert module.default_backend(cuda, cuda, cuda, *video, return_lse=True) == "tiled"
    monkeypatch.setattr(module, "natten_gpu_available", lambda: False)
    assert module.default_backend(cuda, cuda, cuda, *video) == "tiled"
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


# --- the fused CPU kernel (backend "cpu", attnctl.core.window_cpu) -------------------------------------------------

needs_cpu_kernel = pytest.mark.skipif(
    window_cpu.cpu_kernel_error() is not None, reason=f"no fused CPU kernel here: {window_cpu.cpu_kernel_error()}"
)


@needs_cpu_kernel
@pytest.mark.parametrize(("grid", "window", "tile"), CASES)
@pytest.mark.parametrize("dim", [8, 16, 40, 64])
def test_cpu_kernel_matches_the_naive_reference(grid, window, tile, dim):
    query, key, value = qkv(grid, dim=dim, seed=dim)
    expected = naive_masked_softmax(query, key, value, grid, window)
    out, lse = window_attention(query, key, value, grid, window, backend="cpu", return_lse=True)
    torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(lse, naive_window_lse(query, key, grid, window), atol=TOLERANCE, rtol=0)


def assert_as_exact_as_sdpa(out, lse, query, key, value, grid, window, scale):
    """As close to the exact (float64) result as float32 SDPA with the dense mask is, within 4x and 2e-6 plus one
    float32 rounding of the largest sum scale * |q|.|k| times the largest |v| (float32 logits of size L carry
    ~eps L of rounding in any summation order, and SDPA's order is sometimes luckier); the log-sum-exp also
    within two float32 roundings of its size (the fused kernel works in base 2)."""
    stock, stock_lse = window_attention(query, key, value, grid, window, scale=scale, backend="reference",
                                        return_lse=True)
    logits = (query.double() @ key.double().transpose(-1, -2)) * scale
    logits = logits.masked_fill(~window_keep_mask(grid, window), float("-inf"))
    exact, exact_lse = logits.softmax(-1) @ value.double(), logits.logsumexp(-1)
    eps = torch.finfo(torch.float32).eps
    logit_size = scale * (query.abs().double() @ key.abs().double().transpose(-1, -2)).amax()
    assert (out - exact).abs().max() <= 4 * (stock - exact).abs().max() + TOLERANCE + eps * logit_size * value.abs().max()
    rounding = 2 * eps * exact_lse.abs().max()
    assert (lse - exact_lse).abs().max() <= 4 * (stock_lse - exact_lse).abs().max() + TOLERANCE + rounding


@needs_cpu_kernel
@given(
    grid=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    dim=st.integers(1, 70),
    heads=st.integers(1, 3),
    scale=st.floats(0.01, 4.0),
)
@settings(max_examples=60, deadline=None)
def test_cpu_kernel_property_any_grid_window_and_head_dim(grid, fractions, dim, heads, scale):
    window = tuple(max(1, round(size * fraction)) for size, fraction in zip(grid, fractions))
    query, key, value = qkv(tuple(grid), batch=1, heads=heads, dim=dim)
    out, lse = window_cpu.cpu_window_attention(query, key, value, tuple(grid), window, scale, return_lse=True)
    assert_as_exact_as_sdpa(out, lse, query, key, value, grid, window, scale)


@needs_cpu_kernel
def test_cpu_kernel_strips_threads_strides_and_extreme_logits(monkeypatch):
    grid, window = (9, 5, 41), (9, 3, 6)  # two work units of frames (8 + 1) per position
    generator = torch.Generator().manual_seed(4)
    # diffusers' (batch, tokens, heads, dim) layout viewed as (batch, heads, tokens, dim), as Wan passes it
    query, key, value = (torch.randn(2, 9 * 5 * 41, 3, 24, generator=generator).transpose(1, 2) for _ in range(3))
    whole, lse = window_attention(query, key, value, grid, window, backend="cpu", scale=0.5, return_lse=True)
    assert_as_exact_as_sdpa(whole, lse, query, key, value, grid, window, 0.5)
    monkeypatch.setattr(window_cpu, "STRIP_KEYS", 10)  # 8 query columns per strip: 6 strips
    window_cpu._strips.cache_clear()
    try:
        assert len(window_cpu._strips(41, 6)) == 6
        threads = torch.get_num_threads()
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            assert torch.equal(window_attention(query, key, value, grid, window, backend="cpu", scale=0.5), whole)
        torch.set_num_threads(threads)
    finally:
        window_cpu._strips.cache_clear()
    # logits hundreds apart: no overflow, no NaN, as exact as SDPA
    huge, huge_lse = window_attention(query, key, value, grid, window, backend="cpu", scale=300.0, return_lse=True)
    assert_as_exact_as_sdpa(huge, huge_lse, query, key, value, grid, window, 300.0)


@needs_cpu_kernel
def test_kernel_efficiency_counts_filled_rows_and_lanes():
    efficiency = window_cpu.kernel_efficiency
    assert efficiency((8, 32, 32), (8, 15, 15)) == 15 / 16  # one full unit of 8 frames per position
    assert efficiency((4, 32, 32), (4, 15, 15)) == 0.5 * 15 / 16 >= window_cpu.MIN_EFFICIENCY
    assert efficiency((21, 68, 120), (21, 31, 53)) == 21 / 24 * 53 / 64  # units of 8, 8 and 5 frames
    assert efficiency((16, 32, 32), (8, 15, 15)) == 16 / (9 * 8) * 15 / 16  # interior frames each their own unit
    assert efficiency((64, 64), (15, 15)) == 1 / 8 * 15 / 16 < window_cpu.MIN_EFFICIENCY  # one query per unit


@needs_cpu_kernel
def test_cpu_kernel_runs_by_default_where_it_is_efficient():
    video = (8, 6, 20), (None, 3, 15)
    query, key, value = qkv(video[0], batch=1, heads=2, dim=16)
    assert torch.equal(window_attention(query, key, value, *video),
                       window_attention(query, key, value, *video, backend="cpu"))
    assert torch.equal(window_attention(query, key, value, *video, tile=(8, 2, 2)),
                       window_attention(query, key, value, *video, backend="tiled", tile=(8, 2, 2)))
    assert not torch.equal(window_attention(query, key, value, *video, backend="tiled"),
                           window_attention(query, key, value, *video, backend="cpu"))  # not the same kernel
    query.requires_grad_(True)  # autograd: the tiled kernel, which has a backward
    window_attention(query, key, value, *video).sum().backward()
    expected = query.grad.clone()
    query.grad = None
    naive_masked_softmax(query, key, value, *video).sum().backward()
    torch.testing.assert_close(query.grad, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.double(), r"backend='cpu' cannot run here: it computes float32 \(got torch.float64"),
        (lambda t: t.requires_grad_(True), "backend='cpu' cannot run here: it has no backward pass"),
    ],
)
def test_cpu_kernel_refuses_what_it_cannot_compute(change, message):
    grid, window = (8, 6, 7), (8, 3, 5)
    query, key, value = (change(t) for t in qkv(grid, batch=1, heads=1))
    with pytest.raises(ValueError, match=message):
        window_attention(query, key, value, grid, window, backend="cpu")


def test_cpu_kernel_says_why_it_is_missing_and_the_default_falls_back(monkeypatch, tmp_path):
    import attnctl.core.window_attention as module

    grid, window = (8, 6, 20), (8, 3, 15)
    query, key, value = qkv(grid, batch=1, heads=1)
    expected = naive_masked_softmax(query, key, value, grid, window)
    monkeypatch.setenv("ATTNCTL_KERNEL_CACHE", str(tmp_path))
    broken = tmp_path / "broken-cc"  # answers --version, fails every build
    broken.write_text('#!/bin/sh\n[ "$1" = --version ] && echo broken 1.0 && exit 0\necho "error: nope" >&2\nexit 1\n')
    broken.chmod(0o755)
    cases = [
        ("CC", str(tmp_path / "no-such-compiler"), None, "building or loading csrc/window_cpu.c failed"),
        ("CC", str(broken), None, "building csrc/window_cpu.c with .*broken-cc failed: error: nope"),
        (None, None, "AVX2", "it needs a CPU with AVX-512 \\(PyTorch reports AVX2\\)"),
    ]
    try:
        for variable, setting, capability, message in cases:
            if platform.machine().lower() not in ("x86_64", "amd64"):
                message = "it needs an x86-64 CPU"
            elif capability is None and torch.backends.cpu.get_cpu_capability() != "AVX512":
                continue
            with monkeypatch.context() as patch:
                if variable:
                    patch.setenv(variable, setting)
                if capability:
                    patch.setattr(torch.backends.cpu, "get_cpu_capability", lambda reported=capability: reported)
                window_cpu._build.cache_clear()
                assert re.search(message, window_cpu.cpu_kernel_error())
                assert module.default_backend(query, key, value, grid, window) == "tiled"
                assert "cpu" not in available_backends()
                torch.testing.assert_close(window_attention(query, key, value, grid, window), expected,
                                           atol=TOLERANCE, rtol=0)
                with pytest.raises(ValueError, match=f"backend='cpu' cannot run here: {message}"):
                    window_attention(query, key, value, grid, window, backend="cpu")
        assert not list(tmp_path.glob("*.so"))  # a failed build leaves nothing behind
    finally:
        window_cpu._build.cache_clear()


@needs_cpu_kernel
def test_cpu_kernel_builds_once_into_its_cache(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("ATTNCTL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"env {shutil.which('cc') or shutil.which('gcc')}")  # a $CC with a launcher, as ccache
    try:
        window_cpu._build.cache_clear()
        assert window_cpu.cpu_kernel_error() is None
        built = list(tmp_path.glob("window_cpu-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("tmp*"))
        stamp = built[0].stat().st_mtime_ns
        window_cpu._build.cache_clear()
        assert window_cpu.cpu_kernel_error() is None and built[0].stat().st_mtime_ns == stamp
    finally:
        window_cpu._build.cache_clear()


def test_kernel_benchmark_runs_each_method_in_its_own_process():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_freeswim_kernel.py"
    done = subprocess.run(
        [sys.executable, str(script), "--grids", "4x9x9", "--window", "4x5x5", "--methods", "cpu", "tiled", "full",
         "--repeats", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 4x9x9")]
    assert [row[2] for row in rows] == ["cpu", "tiled", "full"]
    assert all(row[9] == "3.24x" for row in rows)  # FLOP bound: 324 tokens / 100 window keys
    assert float(rows[1][3]) > 0 and float(rows[2][3]) > 0  # best ms
    if window_cpu.cpu_kernel_error() is None:
        assert float(rows[0][3]) > 0
    else:
        assert "backend='cpu' cannot run here" in rows[0][3]


@needs_cpu_kernel
@pytest.mark.skipif(sys.platform != "linux", reason="guard pages via mmap and libc's mprotect")
def test_cpu_kernel_never_reads_past_its_buffers(monkeypatch):
    """Every buffer the kernel reads (queries, keys, values, its key and value strips) ends right before an
    unreadable page: a read past any of them would crash the test process."""
    import ctypes
    import mmap
    import random

    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    maps = []

    def guarded(numel, dtype=torch.float32):
        body = (numel * 4 + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        region = mmap.mmap(-1, body + mmap.PAGESIZE)
        assert libc.mprotect(ctypes.addressof(ctypes.c_char.from_buffer(region)) + body, mmap.PAGESIZE, 0) == 0
        maps.append(region)
        return torch.frombuffer(region, dtype=dtype, count=numel, offset=body - numel * 4)

    monkeypatch.setattr(window_cpu, "scratch", lambda slot, numel, dtype: guarded(numel, dtype))
    draw = random.Random(0)
    for _ in range(40):
        axes = draw.randint(1, 3)
        grid = tuple(draw.randint(1, 40 if axis == axes - 1 else 9) for axis in range(axes))
        window = tuple(draw.randint(1, size) for size in grid)
        shape = (draw.randint(1, 2), draw.randint(1, 3), math.prod(grid), draw.randint(1, 70))
        query, key, value = (guarded(math.prod(shape)).view(shape).copy_(torch.randn(shape)) for _ in range(3))
        out = window_attention(query, key, value, grid, window, backend="cpu")
        torch.testing.assert_close(out, naive_masked_softmax(query, key, value, grid, window), atol=4 * TOLERANCE,
                                   rtol=0)


FORKED_CHILD = """
import multiprocessing, sys, torch
from attnctl.core.window_attention import window_attention

torch.set_num_threads(2)  # before the fork: the child inherits it and splits rows across its own pool
query, key, value = (torch.randn(1, 2, 8 * 6 * 20, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))

def attend(_):
    return window_attention(query, key, value, (8, 6, 20), (8, 3, 15), backend="cpu")

expected = attend(None)  # the parent's pool threads exist now
with multiprocessing.get_context("fork").Pool(1) as pool:
    out = pool.map_async(attend, [None]).get(timeout=60)[0]
sys.exit(0 if torch.equal(out, expected) else 1)
"""


@needs_cpu_kernel
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_cpu_kernel_threads_work_in_a_forked_child():
    """A forked child has none of its parent's pool threads: it must start its own, not wait forever. Run in a
    fresh interpreter: forking the test worker itself, with whatever threads earlier tests left, can deadlock
    on locks those threads held, which says nothing about this kernel."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
