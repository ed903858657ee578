"""Inward sliding-window self-attention over a token grid, with interchangeable backends (NATTEN-like API).

``window_attention(q, k, v, grid, window)`` computes, for each query, softmax attention over the keys inside
its inward window (:mod:`attnctl.core.windows`). Backends:

* ``"reference"``: dense boolean mask + SDPA; O(tokens^2) memory; the oracle every other backend is tested
  against;
* ``"cpu"``: the fused CPU kernel (:mod:`attnctl.core.window_cpu`, C with AVX-512, built on first use): visits
  only each query's window; float32 CPU tensors without autograd; the default on CPU for video grids whose
  window spans several frames (FreeSwim's), where it is 3.3-3.7x and 14-15x faster than full SDPA at 8x32x32
  and 8x64x64 tokens (BENCHMARKS.md, "Fused CPU window kernel");
* ``"tiled"``: dense SDPA blocks over query tiles (:mod:`attnctl.core.window_tiles`); never builds an N x N
  matrix; any dtype, device and autograd; the default elsewhere on CPU and on GPUs without NATTEN (on an
  H200 at FreeSwim's 1080p grid it ran 2.9x faster than compiled flex: BENCHMARKS.md, "FreeSwim on a GPU");
* ``"flex"``: ``flex_attention`` with an analytic block mask, compiled when ``torch.compile`` works
  (:mod:`attnctl.core.window_flex`); raster token order leaves many partly masked blocks;
* ``"natten"``: ``natten.na1d/na2d/na3d`` (same border rule); the default where NATTEN has its compiled GPU
  library and the tensors are on CUDA.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .lse import attention_with_lse
from .window_cpu import MIN_EFFICIENCY, cpu_kernel_error, cpu_window_attention, kernel_efficiency, unsupported
from .window_flex import flex_window_attention
from .window_tiles import tiled_window_attention
from .windows import Window, covers_grid, resolve_window, window_keep_mask

BACKENDS = ("reference", "cpu", "tiled", "flex", "natten")
BAND_TILE = 8  # default queries per tile on windowed axes other than the last (axes with a whole-axis window: one tile)
MIN_QUERY_TILE = 32  # the last axis takes just enough queries per tile to reach this many (measured on CPU)


def natten_gpu_available() -> bool:
    """Whether NATTEN is installed with its compiled CUDA library (``libnatten``) and a GPU is present."""
    if importlib.util.find_spec("natten") is None or not torch.cuda.is_available():
        return False
    from natten._libnatten import HAS_LIBNATTEN

    return bool(HAS_LIBNATTEN)


def flex_available() -> bool:
    """Whether this torch has ``flex_attention`` (it may still fall back to eager if compiling fails)."""
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def available_backends() -> tuple[str, ...]:
    """The backends that can run in this environment (``natten`` without its GPU library runs NATTEN's own
    pure-PyTorch path)."""
    names = ["reference", *(["cpu"] if cpu_kernel_error() is None else []), "tiled"]
    if flex_available():
        names.append("flex")
    if importlib.util.find_spec("natten") is not None:
        names.append("natten")
    return tuple(names)


def default_backend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    return_lse: bool = False,
) -> str:
    """``natten`` on CUDA with a NATTEN GPU build (unless the log-sum-exp is wanted); ``cpu`` where the fused CPU
    kernel takes these tensors and uses at least ``MIN_EFFICIENCY`` of its work
    (:func:`~attnctl.core.window_cpu.kernel_efficiency`: video grids whose window spans 4 or more frames); else
    ``tiled`` (measured faster than compiled ``flex`` on an H200 at both FreeSwim grids)."""
    if query.device.type == "cuda" and natten_gpu_available() and not return_lse:
        return "natten"
    if kernel_efficiency(grid, window) >= MIN_EFFICIENCY and unsupported(query, key, value) is None:
        return "cpu"
    return "tiled"


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: Sequence[int],
    window: Window,
    *,
    scale: float | None = None,
    backend: str | None = None,
    tile: Sequence[int] | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Self-attention restricted to inward windows.

    Args:
        query, key, value: (batch, heads, tokens, head_dim), SDPA's layout (any strides), with
            ``tokens = prod(grid)`` in raster order, first grid axis slowest.
        grid: the token grid, 1 to 3 axes, e.g. (frames, height, width).
        window: window size per axis (``None`` = whole axis); must not exceed the grid (see
            :func:`attnctl.core.windows.resolve_window` for the fallback to full attention).
        scale: softmax scale; ``None`` is SDPA's ``1/sqrt(head_dim)``.
        backend: one of ``BACKENDS``; ``None`` picks :func:`default_backend` for these tensors and grid, or
            ``tiled`` when a ``tile`` is given.
        tile: queries per tile and axis for the ``tiled`` backend; default :func:`default_tile`.
        return_lse: also return each query's log-sum-exp over its window (not with ``natten``), to merge in
            more keys exactly with :func:`attnctl.core.lse.merge_attention`.

    Returns:
        (batch, heads, tokens, head_dim), and with ``return_lse`` the (batch, heads, tokens) float32 log-sum-exp.
        A window covering the grid gives exactly ``F.scaled_dot_product_attention``.
    """
    grid = tuple(int(n) for n in grid)
    window = resolve_window(grid, window)
    _check_qkv(query, key, value, grid)
    if backend is None:
        backend = "tiled" if tile is not None else default_backend(query, key, value, grid, window, return_lse)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if return_lse and backend == "natten":
        raise ValueError("return_lse=True is not available with backend='natten'; use 'flex' or 'tiled'")
    covered = covers_grid(grid, window)
    if covered or backend == "reference":
        mask = None if covered else window_keep_mask(grid, window).to(query.device)
        if return_lse:
            return attention_with_lse(query, key, value, attn_mask=mask, scale=scale)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    if backend == "cpu":
        return cpu_window_attention(query, key, value, grid, window, scale, return_lse)
    if backend == "tiled":
        tiles = _tile_sizes(grid, window, tile)
        return tiled_window_attention(query, key, value, grid, window, tiles, scale, return_lse)
    if backend == "flex":
        if not flex_available():
            raise ValueError("backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        return flex_window_attention(query, key, value, grid, window, scale, return_lse=return_lse)
    return _natten_attention(query, key, value, grid, window, scale)


def default_tile(grid: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    """``BAND_TILE`` queries on windowed leading axes, the whole of fully-attended ones, and as few on the last
    axis as make a tile of ``MIN_QUERY_TILE`` queries: small tiles waste little (the key rectangle is
    ``tile - 1 + window`` per axis) and the last axis costs no key copies (:mod:`attnctl.core.window_tiles`).
    On 8x32x32 and 8x64x64 grids with 15x15 windows (CPU), (8, 8, 1) beat (8, 4, 1), (8, 6, 1), (8, 4, 2) and
    (8, 4, 4) by 5-25%.
    """
    leading = [n if w >= n else min(BAND_TILE, n) for n, w in zip(grid[:-1], window[:-1])]
    return (*leading, min(grid[-1], max(1, math.ceil(MIN_QUERY_TILE / math.prod(leading)))))


def _tile_sizes(grid: tuple[int, ...], window: tuple[int, ...], tile: Sequence[int] | None) -> tuple[int, ...]:
    if tile is None:
        return default_tile(grid, window)
    tile = tuple(tile)
    if len(tile) != len(grid) or any(int(t) != t or t < 1 for t in tile):
        raise ValueError(f"tile={tile} must give one positive integer per grid axis (grid={grid})")
    return tuple(int(t) for t in tile)


def _check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, ...]) -> None:
    if query.ndim != 4 or key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            "query, key and value must all be (batch, heads, tokens, head_dim) with equal shapes; got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[2] != math.prod(grid):
        raise ValueError(f"query has {query.shape[2]} tokens but grid={grid} holds {math.prod(grid)}")


def _natten_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    scale: float | None,
) -> torch.Tensor:
    """``natten.na{1,2,3}d``; NATTEN's heads-last layout is (batch, *grid, heads, head_dim)."""
    if importlib.util.find_spec("natten") is None:
        raise ValueError("backend='natten' needs the natten package (pip install natten)")
    import natten

    batch, heads, tokens, dim = query.shape
    operator = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(grid)]

    def heads_last(tensor: torch.Tensor) -> torch.Tensor:
        # (batch, heads, tokens, dim) -> (batch, *grid, heads, dim)
        return tensor.transpose(1, 2).reshape(batch, *grid, heads, dim)

    kernel_size = window[0] if len(grid) == 1 else window
    out = operator(heads_last(query), heads_last(key), heads_last(value), kernel_size=kernel_size, scale=scale)
    return out.reshape(batch, tokens, heads, dim).transpose(1, 2)  # back to (batch, heads, tokens, dim)
