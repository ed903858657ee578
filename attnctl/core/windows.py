"""Inward sliding windows over 1-D, 2-D and 3-D token grids: the geometry, nothing model-specific.

A window of size ``k`` on an axis of ``n`` tokens is the interval ``[s, s + k)`` with
``s = clamp(x - k // 2, 0, n - k)`` for the query at coordinate ``x``: centred in the interior and shifted
inward at the borders, so every query sees exactly ``k`` keys on that axis (neighbourhood attention's border
rule, Hassani et al. 2023; FreeSwim uses it with the native token grid as window). A multi-axis window
is the product of the axis intervals. ``inward=False`` gives the clipped window (the "no inward" ablation):
``[max(x - k // 2, 0), min(x - k // 2 + k, n))``. In both modes a window as large as its axis is the whole axis.

Tokens are flattened in raster order, first axis slowest (diffusers' (frames, height, width) patch order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Window = Sequence[int | None]  # one size per axis; None means the whole axis


def inward_starts(size: int, window: int) -> torch.Tensor:
    """(size,) int64: the first key of each query's inward window, ``clamp(x - window // 2, 0, size - window)``."""
    _check_axis(size, window)
    return (torch.arange(size) - window // 2).clamp(0, size - window)


def window_bounds(size: int, window: int, *, inward: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query on one axis: ``(start, stop)`` of its key interval, stop exclusive, each (size,) int64."""
    _check_axis(size, window)
    if inward or window == size:
        start = inward_starts(size, window)
        return start, start + window
    centred = torch.arange(size) - window // 2
    return centred.clamp(min=0), (centred + window).clamp(max=size)


def resolve_window(grid: Sequence[int], window: Window, *, allow_full: bool = False) -> tuple[int, ...]:
    """Validate ``window`` against ``grid`` and return one concrete size per axis.

    ``None`` entries mean the whole axis. A window larger than its axis is an error unless ``allow_full``, in
    which case that axis falls back to full attention (the window becomes the axis).
    """
    grid, window = tuple(int(n) for n in grid), tuple(window)
    if not 1 <= len(grid) <= 3 or any(n < 1 for n in grid):
        raise ValueError(f"grid={grid} must have 1 to 3 positive sizes (frames, height, width)")
    if len(window) != len(grid):
        raise ValueError(f"window={window} must give one size per grid axis (grid={grid}); use None for 'all'")
    resolved = []
    for axis, (size, width) in enumerate(zip(grid, window)):
        if width is None:
            resolved.append(size)
            continue
        if int(width) != width or width < 1:
            raise ValueError(f"window[{axis}]={width!r} must be a positive integer or None")
        if width > size and not allow_full:
            raise ValueError(
                f"window[{axis}]={width} is larger than grid[{axis}]={size}; shrink the window or pass "
                "allow_full=True to fall back to full attention along that axis"
            )
        resolved.append(min(int(width), size))
    return tuple(resolved)


def covers_grid(grid: Sequence[int], window: Sequence[int]) -> bool:
    """Whether every query's window is the whole grid, i.e. window attention is full attention."""
    return all(width >= size for size, width in zip(grid, window))


def grid_coordinates(grid: Sequence[int]) -> torch.Tensor:
    """(tokens, axes) int64: the grid coordinate of each token in raster order."""
    axes = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    return torch.stack(axes, dim=-1).reshape(math.prod(grid), len(grid))


def window_keep_mask(grid: Sequence[int], window: Window, *, inward: bool = True) -> torch.Tensor:
    """(tokens, tokens) bool: ``mask[q, k]`` is True where query ``q`` attends key ``k``.

    Dense and O(tokens^2): the definition the fast kernels are tested against, for small grids only.
    """
    sizes = resolve_window(grid, window)
    coords = grid_coordinates(grid)
    keep = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool)
    for axis, (size, width) in enumerate(zip(grid, sizes)):
        start, stop = window_bounds(size, width, inward=inward)
        query_axis, key_axis = coords[:, axis], coords[:, axis]
        keep &= (key_axis[None, :] >= start[query_axis][:, None]) & (key_axis[None, :] < stop[query_axis][:, None])
    return keep


def _check_axis(size: int, window: int) -> None:
    if not 1 <= window <= size:
        raise ValueError(f"window={window} must be between 1 and the axis size {size}")
