"""The flex_attention backend of inward-window attention: a block-sparse mask built analytically.

``create_block_mask`` evaluates the mask on every block pair (52 s for a 1080p Wan grid on 2 CPU cores);
here each pair of 128-token raster blocks is classified from per-axis coordinate ranges instead, O(blocks^2)
small comparisons. A pair is *full* when every query window of the query block covers every key of the key
block (exact, because the window is a product of axis intervals), *partial* when the bounding intervals meet
(a superset, refined by the element ``mask_mod``), and skipped otherwise.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch

from .windows import grid_coordinates, inward_starts

BLOCK = 128


def _axis_ranges(values: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks, axes) min and max of ``values`` (tokens, axes) over each run of ``BLOCK`` tokens."""
    blocks = math.ceil(tokens / BLOCK)
    padded = torch.cat([values, values[-1:].expand(blocks * BLOCK - tokens, -1)])  # repeat the last token
    per_block = padded.view(blocks, BLOCK, -1)
    return per_block.amin(dim=1), per_block.amax(dim=1)


def _ordered_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (1, 1, q_blocks) and indices (1, 1, q_blocks, kv_blocks), selected key blocks first."""
    counts = selected.sum(dim=1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


@lru_cache(maxsize=16)
def window_block_mask(grid: tuple[int, ...], window: tuple[int, ...], device: str):
    """The cached ``BlockMask`` of inward windows ``window`` on ``grid`` (raster token order)."""
    from torch.nn.attention.flex_attention import BlockMask

    tokens = math.prod(grid)
    coords = grid_coordinates(grid)  # (tokens, axes)
    starts = torch.stack([inward_starts(n, w)[coords[:, a]] for a, (n, w) in enumerate(zip(grid, window))], -1)
    sizes = torch.tensor(window)
    start_min, start_max = _axis_ranges(starts, tokens)  # query blocks: range of window starts
    coord_min, coord_max = _axis_ranges(coords, tokens)  # key blocks: range of coordinates
    meets = (coord_min[None] <= start_max[:, None] + sizes - 1) & (coord_max[None] >= start_min[:, None])
    inside = (coord_min[None] >= start_max[:, None]) & (coord_max[None] <= start_min[:, None] + sizes - 1)
    full = inside.all(dim=-1)  # (q_blocks, kv_blocks)
    partial = meets.all(dim=-1) & ~full
    kv_num, kv_idx = _ordered_indices(partial)
    full_num, full_idx = _ordered_indices(full)
    return BlockMask.from_kv_blocks(
        kv_num.to(device),
        kv_idx.to(device),
        full_num.to(device),
        full_idx.to(device),
        BLOCK_SIZE=BLOCK,
        mask_mod=_window_mask_mod(grid, window),
        seq_lengths=(tokens, tokens),
    )


def _window_mask_mod(grid: tuple[int, ...], window: tuple[int, ...]):
    """The element mask: key inside the query's inward window on every axis."""
    strides = [math.prod(grid[axis + 1 :]) for axis in range(len(grid))]

    def mask_mod(batch, head, q_index, kv_index):
        keep = None
        for size, width, stride in zip(grid, window, strides):
            q_coord, kv_coord = (q_index // stride) % size, (kv_index // stride) % size
            start = (q_coord - width // 2).clamp(0, size - width)
            axis_keep = (kv_coord >= start) & (kv_coord < start + width)
            keep = axis_keep if keep is None else keep & axis_keep
        return keep

    return mask_mod


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_COMPILE_FAILED: dict[tuple[str, bool], str] = {}  # (device type, return_lse) -> why compiling failed


def flex_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    scale: float | None = None,
    compile: bool = True,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Inward-window attention with ``flex_attention``, compiled unless ``compile=False`` or compiling failed.

    Uncompiled flex attention is correct but materialises the scores (O(tokens^2) memory on CPU). With
    ``return_lse`` also the (batch, heads, tokens) float32 log-sum-exp.
    """
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = window_block_mask(grid, window, str(query.device))
    # failures are remembered per kind of call: Inductor's CPU flex kernel cannot return the lse, yet compiles
    # the plain call fine
    kind = (query.device.type, return_lse)
    if compile and kind not in _COMPILE_FAILED:
        try:
            result = _compiled_flex()(query, key, value, block_mask=block_mask, scale=scale, **_lse_request(return_lse))
            return _with_lse(result, return_lse)
        except Exception as error:  # Inductor needs a working C++/Triton toolchain; fall back once, loudly
            _COMPILE_FAILED[kind] = repr(error)
            warnings.warn(f"flex_attention could not be compiled ({error!r}); running it eagerly", stacklevel=2)
    result = flex_attention(query, key, value, block_mask=block_mask, scale=scale, **_lse_request(return_lse))
    return _with_lse(result, return_lse)


def _lse_request(return_lse: bool) -> dict:
    """flex_attention's keyword for the log-sum-exp: ``return_aux`` (torch >= 2.9) or the older ``return_lse``."""
    if not return_lse:
        return {}
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}


def _with_lse(result, return_lse: bool):
    """``output`` or ``(output, lse)`` from either form of flex_attention's result."""
    if not return_lse:
        return result
    out, extra = result
    return out, getattr(extra, "lse", extra).float()


def flex_compile_error() -> str | None:
    """Why compiling flex_attention failed in this process, or None if it has not failed."""
    return next(iter(_COMPILE_FAILED.values()), None)
