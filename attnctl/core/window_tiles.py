"""The tiled inward-window attention kernel: dense SDPA blocks, never an N x N mask or score matrix.

Queries are cut into tiles (all of an axis whose window is the whole axis). A tile attends to the smallest
key rectangle holding all of its queries' windows (their union: ``tile - 1 + window`` per axis inside the
grid, just ``window`` where the border pushes every window of the tile to the same place), with a small
additive mask that removes only what that union adds. Two layout tricks keep the data movement linear:

* the last axis (width) is the *view axis*: key rectangles of the tiles along it are overlapping strided views
  of one band (no copy), so neighbouring tiles share their keys in cache;
* the other axes are *band axes*: per tile of those axes the keys of its rectangle are copied once, with the
  view axis outermost, into that band (``rect / tile`` copies of the keys per band axis). Keys and values are
  first permuted once to (view axis, windowed band axes, whole band axes), so that these band copies move
  long contiguous runs (all frames of a column of rows at once) instead of single tokens.

Tiles along an axis group into *runs*: consecutive tiles whose tile and rectangle starts step evenly and whose
masks are equal (the interior, and the two borders where the window is pushed inward). One run per axis gives
one strided SDPA call, so a 3-D grid needs about 3 x 3 calls whatever its size. A tile that would pass the
grid's end is shifted inward like a window; its queries overlap the previous tile and are written twice with
the same value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
import torch.nn.functional as F

from .lse import attention_with_lse
from .scratch import fresh_copies, scratch_copy
from .windows import inward_starts

BAND_BYTES = 8 * 2**20  # largest key (and value) band copied for one SDPA call; bigger runs are split


@dataclass(frozen=True)
class AxisRun:
    """Consecutive query tiles on one axis that share one mask and step evenly through the grid."""

    count: int
    tile_start: int
    tile_step: int
    rect_start: int
    rect_step: int
    keep: torch.Tensor  # (tile, rect) bool: query i of a tile attends key j of its rectangle

    @property
    def rect(self) -> int:
        return self.keep.shape[1]

    def part(self, first: int, count: int) -> AxisRun:
        """The sub-run of ``count`` tiles starting at tile ``first`` of this run."""
        return replace(
            self,
            count=count,
            tile_start=self.tile_start + first * self.tile_step,
            rect_start=self.rect_start + first * self.rect_step,
        )


@dataclass(frozen=True)
class AxisTiling:
    """How one axis is tiled: queries per tile, whether the window is smaller than the axis, the runs."""

    tile: int
    windowed: bool
    runs: tuple[AxisRun, ...]


def axis_tiling(size: int, window: int, tile: int) -> AxisTiling:
    """Tile an axis of ``size`` tokens with inward windows of ``window`` into runs of ``tile`` queries.

    A tile starting at ``x`` attends to the union of its windows, ``[s(x), s(x + tile - 1) + window)`` with ``s``
    the inward window start (non-decreasing, so the first and last query bound it).
    """
    tile = size if window >= size else min(tile, size)
    starts = inward_starts(size, window)
    runs: list[AxisRun] = []
    previous = None
    for first in (min(index * tile, size - tile) for index in range(math.ceil(size / tile))):
        rect_start = int(starts[first])
        offsets = torch.arange(int(starts[first + tile - 1]) + window - rect_start)
        window_start = starts[first : first + tile, None] - rect_start  # (tile, 1), relative to the rectangle
        keep = (offsets >= window_start) & (offsets < window_start + window)
        if runs and runs[-1].keep.shape == keep.shape and torch.equal(runs[-1].keep, keep):
            run = runs[-1]
            steps = (first - previous[0], rect_start - previous[1])
            if run.count == 1 or steps == (run.tile_step, run.rect_step):
                runs[-1] = replace(run, count=run.count + 1, tile_step=steps[0], rect_step=steps[1])
                previous = (first, rect_start)
                continue
        runs.append(AxisRun(1, first, 0, rect_start, 0, keep))
        previous = (first, rect_start)
    return AxisTiling(tile, window < size, tuple(runs))


@dataclass
class TilePlan:
    """Tiling of a whole grid plus the masks of every combination of runs (cached per dtype and device)."""

    grid: tuple[int, ...]
    axes: tuple[AxisTiling, ...]
    key_order: tuple[int, ...]  # axis order of the permuted keys: view axis, windowed band axes, whole axes
    keeps: dict[tuple[int, ...], torch.Tensor | None] = field(default_factory=dict)
    _masks: dict[tuple, torch.Tensor | None] = field(default_factory=dict, repr=False)

    @property
    def query_tile(self) -> int:
        return math.prod(axis.tile for axis in self.axes)

    def combos(self) -> list[tuple[int, ...]]:
        """Index of one run per axis, for every combination."""
        return list(itertools.product(*(range(len(axis.runs)) for axis in self.axes)))

    def mask(self, combo: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """(query_tile, key_rect) additive mask of one run combination, or None where nothing is masked."""
        key = (combo, dtype, device)
        if key not in self._masks:
            keep = self.keeps[combo]
            self._masks[key] = None if keep is None else torch.zeros(
                keep.shape, dtype=dtype, device=device
            ).masked_fill_(~keep.to(device), float("-inf"))
        return self._masks[key]


def _key_order(axes: tuple[AxisTiling, ...]) -> tuple[int, ...]:
    """View (last) axis first, then the windowed band axes, then the band axes attended whole."""
    band = range(len(axes) - 1)
    return (len(axes) - 1, *(a for a in band if axes[a].windowed), *(a for a in band if not axes[a].windowed))


def _combined_keep(plan: TilePlan, runs: tuple[AxisRun, ...]) -> torch.Tensor | None:
    """AND of the axis masks as (query_tile, key_rect); queries in grid order, keys in ``plan.key_order``.

    None where every query of the tile sees every key of its rectangle.
    """
    ndim = len(plan.axes)
    key_dim = {axis: ndim + position for position, axis in enumerate(plan.key_order)}
    keep = None
    for axis, run in enumerate(runs):
        if bool(run.keep.all()):
            continue
        shape = [1] * (2 * ndim)
        shape[axis], shape[key_dim[axis]] = run.keep.shape
        part = run.keep.view(shape)
        keep = part if keep is None else keep & part
    if keep is None:
        return None
    rects = [runs[axis].rect for axis in plan.key_order]
    return keep.expand([axis.tile for axis in plan.axes] + rects).reshape(plan.query_tile, math.prod(rects))


@lru_cache(maxsize=32)
def tile_plan(grid: tuple[int, ...], window: tuple[int, ...], tile: tuple[int, ...]) -> TilePlan:
    """The cached plan for one grid, window and tile size (all tuples with one entry per axis)."""
    axes = tuple(axis_tiling(n, w, t) for n, w, t in zip(grid, window, tile))
    plan = TilePlan(grid, axes, _key_order(axes))
    for combo in plan.combos():
        runs = tuple(axis.runs[index] for axis, index in zip(axes, combo))
        plan.keeps[combo] = _combined_keep(plan, runs)
    return plan


def tiled_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    tile: tuple[int, ...],
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Inward-window attention, (batch, heads, tokens, head_dim) in and out; see the module docstring.

    With ``return_lse`` also each query's log-sum-exp over its window, (batch, heads, tokens) float32.
    """
    plan = tile_plan(grid, window, tile)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device) if return_lse else None
    with fresh_copies(query, key, value):
        key, value = _permute_keys(key, plan, "key grid"), _permute_keys(value, plan, "value grid")
        for combo in plan.combos():
            runs = tuple(axis.runs[index] for axis, index in zip(plan.axes, combo))
            mask = plan.mask(combo, query.dtype, query.device)
            for part in _split_band(plan, runs, query):
                _attend_runs(plan, part, query, key, value, out, lse, mask, scale)
    return (out, lse) if return_lse else out


def _permute_keys(tensor: torch.Tensor, plan: TilePlan, slot: str) -> torch.Tensor:
    """(batch, heads, tokens, dim) -> contiguous (batch, heads, *grid in ``plan.key_order``, dim)."""
    grid_view = tensor.unflatten(2, plan.grid)  # (batch, heads, *grid, dim)
    return scratch_copy(slot, grid_view.permute(0, 1, *(2 + axis for axis in plan.key_order), grid_view.ndim - 1))


def _split_band(plan: TilePlan, runs: tuple[AxisRun, ...], query: torch.Tensor) -> list[tuple[AxisRun, ...]]:
    """Split the band axis with the most tiles so that each copied key band stays under ``BAND_BYTES``."""
    if len(runs) == 1:
        return [runs]
    batch, heads, _, dim = query.shape
    band_bytes = batch * heads * query.element_size() * dim * plan.grid[-1] * math.prod(
        run.rect * run.count for run in runs[:-1]
    )
    axis = max(range(len(runs) - 1), key=lambda a: runs[a].count)
    run = runs[axis]
    step = max(1, BAND_BYTES * run.count // band_bytes)
    return [
        (*runs[:axis], run.part(start, min(step, run.count - start)), *runs[axis + 1 :])
        for start in range(0, run.count, step)
    ]


def _tile_view(tensor: torch.Tensor, plan: TilePlan, runs: tuple[AxisRun, ...]) -> torch.Tensor:
    """(batch, heads, count_0..count_m-1, tile_0..tile_m-1, head_dim) strided view of the query tiles."""
    token = tensor.stride(2)
    axis_stride = [math.prod(plan.grid[axis + 1 :]) * token for axis in range(len(plan.grid))]
    shape = (*tensor.shape[:2], *(r.count for r in runs), *(a.tile for a in plan.axes), tensor.shape[-1])
    stride = (
        *tensor.stride()[:2],
        *(r.tile_step * s for r, s in zip(runs, axis_stride)),
        *axis_stride,
        tensor.stride(3),
    )
    offset = tensor.storage_offset() + sum(r.tile_start * s for r, s in zip(runs, axis_stride))
    return tensor.as_strided(shape, stride, offset)


def _key_view(keys: torch.Tensor, plan: TilePlan, runs: tuple[AxisRun, ...], slot: str) -> torch.Tensor:
    """(batch', view_tiles, key_rect, head_dim): every tile's key rectangle, band copy plus strided view.

    ``keys`` come from :func:`_permute_keys`. ``batch'`` is batch * heads * (tiles of the band axes, in grid
    order); keys inside a rectangle are ordered as ``plan.key_order``, as :func:`_combined_keep` lays out the mask.
    """
    grid, order, view = plan.grid, plan.key_order, len(plan.grid) - 1
    stride = {axis: keys.stride(2 + position) for position, axis in enumerate(order)}
    band_axes = order[1:]
    rects = [runs[axis].rect for axis in band_axes]
    # band copy: (batch, heads, count per band axis (grid order).., view size, rect per band axis (key order).., dim)
    shape = (*keys.shape[:2], *(runs[a].count for a in range(view)), grid[view], *rects, keys.shape[-1])
    strides = (
        *keys.stride()[:2],
        *(runs[a].rect_step * stride[a] for a in range(view)),
        stride[view],
        *(stride[a] for a in band_axes),
        1,
    )
    offset = keys.storage_offset() + sum(runs[a].rect_start * stride[a] for a in range(view))
    band = scratch_copy(slot, keys.as_strided(shape, strides, offset))
    dim, per_position = keys.shape[-1], math.prod(rects) * keys.shape[-1]
    rows = band.numel() // (grid[view] * per_position)
    return band.as_strided(
        (rows, runs[view].count, runs[view].rect * per_position // dim, dim),
        (grid[view] * per_position, runs[view].rect_step * per_position, dim, 1),
        runs[view].rect_start * per_position,
    )


def _attend_runs(
    plan: TilePlan,
    runs: tuple[AxisRun, ...],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: float | None,
) -> None:
    """One SDPA call for one combination of runs, written into ``out`` (and ``lse`` if given) in place."""
    keys, values = _key_view(key, plan, runs, "key band"), _key_view(value, plan, runs, "value band")
    # (batch, heads, counts.., tiles.., dim) -> (batch', view_tiles, query_tile, dim), a copy
    queries = scratch_copy("query tiles", _tile_view(query, plan, runs)).view(
        keys.shape[0], runs[-1].count, plan.query_tile, -1
    )
    if runs[-1].rect_step == 0 and runs[-1].count > 1:
        # a border run: every tile along the view axis reads the same rectangle, so its tiles are one query
        # block (rows, 1, count * query_tile, dim) against one copy of the keys, not count stride-0 copies
        keys, values = keys[:, :1], values[:, :1]
        queries = queries.view(keys.shape[0], 1, -1, queries.shape[-1])
        mask = None if mask is None else mask.repeat(runs[-1].count, 1)
    if lse is None:
        attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    else:
        attended, attended_lse = attention_with_lse(queries, keys, values, attn_mask=mask, scale=scale)
        lse_target = _tile_view(lse[..., None], plan, runs)
        lse_target.copy_(attended_lse.view(lse_target.shape))
    target = _tile_view(out, plan, runs)
    target.copy_(attended.view(target.shape))
