"""2-D neighbourhood attention (Hassani et al. 2023, "Neighborhood Attention Transformer", Sec. 3.1) on the
shared inward-window code: geometry from :mod:`attnctl.core.windows`, kernels from
:func:`attnctl.core.window_attention.window_attention` (tiled SDPA on CPU; flex or NATTEN on GPUs).

Each query attends to a ``kernel x kernel`` neighbourhood centred on it; at the borders the window is shifted
inward, never clipped, so every query sees exactly ``kernel_h * kernel_w`` keys (NA's border rule, the same as
FreeSwim's; a 2-D grid is the (H, W) case of the shared 1-3 axis geometry). The CPU kernel tiles queries in
``tile x tile`` squares and attends each to the union of its windows with dense SDPA blocks, never an
(H*W)^2 matrix.
A kernel covering the grid is full attention. Even kernels are allowed (k//2 before, k//2 - 1 after); NATTEN
allows odd ones only. Dilation is not supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.window_attention import window_attention
from ..core.windows import resolve_window, window_keep_mask
from .grid import GridSelfAttention, as_pair, check_grid, check_positive, naive_attention


def _check_kernel(kernel: tuple[int, int], grid: tuple[int, int]) -> None:
    if kernel[0] > grid[0] or kernel[1] > grid[1]:
        raise ValueError(
            f"kernel_size={kernel} exceeds the token grid {grid[0]}x{grid[1]}; "
            "use a kernel no larger than the grid"
        )


def neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    kernel_size: int | tuple[int, int],
    tile: int = 8,
    backend: str | None = None,
) -> torch.Tensor:
    """NA with the inward border rule. Shapes: (batch, heads, H*W, head_dim) -> same.

    ``tile x tile`` queries share one SDPA block of the ``tiled`` backend: 8 used the least CPU time on a
    2-core CPU for 7x7 and 14x14 windows at 112-224 tokens a side (full-width row tiles grow with the width).
    ``backend`` as in :func:`~attnctl.core.window_attention.window_attention`.
    """
    kernel = as_pair("kernel_size", kernel_size)
    _check_kernel(kernel, grid)
    tiles = (check_positive("tile", tile),) * 2
    return window_attention(query, key, value, grid, kernel, backend=backend, tile=tiles)


def neighborhood_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    kernel_size: int | tuple[int, int],
) -> torch.Tensor:
    """Slow oracle: the shared dense (H*W)^2 inward-window mask and explicit softmax."""
    kernel = as_pair("kernel_size", kernel_size)
    _check_kernel(kernel, grid)
    return naive_attention(query, key, value, window_keep_mask(grid, kernel).to(query.device))


def cls_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    window: tuple[int, int],
    scale: float | None = None,
    tile: int = 8,
    backend: str | None = None,
) -> torch.Tensor:
    """ViT attention with a global CLS token: (batch, heads, 1 + H*W, head_dim) -> same, token 0 the CLS.

    The CLS query attends to every token; each patch query attends to the CLS key and to its inward ``window``
    of patches (a window larger than the grid is clipped to the grid, so a covering window is full attention).

    The shared kernel has no global keys, so the CLS key rides in a second *frame* of a (2, H, W) grid whose
    windows span all frames: frame 0 holds a copy of the CLS key at every position, and every patch query sees
    exactly ``window_h * window_w`` of those copies (the inward rule keeps the count fixed). One extra head
    channel, 1 on the queries and ``-log(copies) / scale`` on the copies, adds ``-log(copies)`` to their
    logits, so together they weigh exactly one CLS key. Exact; costs about 4x the patch-only window kernel
    (twice the queries, twice the keys).
    """
    window = resolve_window(grid, window, allow_full=True)
    batch, heads, tokens, dim = query.shape
    patches = grid[0] * grid[1]
    if tokens != 1 + patches:
        raise ValueError(f"query has {tokens} tokens; a CLS token plus grid={grid} needs {1 + patches}")
    scale = dim**-0.5 if scale is None else scale
    cls_out = F.scaled_dot_product_attention(query[:, :, :1], key, value, scale=scale)  # (batch, heads, 1, d)

    def channel(x: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.cat([x, x.new_full((*x.shape[:-1], 1), fill)], dim=-1)  # (..., d + 1)

    copies = math.prod(window)
    frame_shape = (batch, heads, patches, dim + 1)
    queries = torch.cat([query.new_zeros(frame_shape), channel(query[:, :, 1:], 1.0)], dim=2)
    keys = torch.cat(
        [channel(key[:, :, :1], -math.log(copies) / scale).expand(frame_shape), channel(key[:, :, 1:], 0.0)],
        dim=2,
    )  # (batch, heads, 2 * patches, d + 1)
    values = torch.cat(
        [channel(value[:, :, :1], 0.0).expand(frame_shape), channel(value[:, :, 1:], 0.0)], dim=2
    )
    frames = (2, *grid)
    tiles = (2, check_positive("tile", tile), tile)
    out = window_attention(
        queries, keys, values, frames, (2, *window), scale=scale, backend=backend, tile=tiles
    )
    return torch.cat([cls_out, out[:, :, patches:, :dim]], dim=2)


def cls_window_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    window: tuple[int, int],
    scale: float | None = None,
) -> torch.Tensor:
    """Slow oracle for :func:`cls_window_attention`: the dense window mask plus an all-True CLS row/column."""
    window = resolve_window(grid, window, allow_full=True)
    patches = grid[0] * grid[1]
    keep = torch.ones(1 + patches, 1 + patches, dtype=torch.bool)
    keep[1:, 1:] = window_keep_mask(grid, window)
    if scale is not None:  # naive_attention uses 1/sqrt(d); fold a custom scale into the queries
        query = query * (scale * query.shape[-1] ** 0.5)
    return naive_attention(query, key, value, keep.to(query.device))


class NeighborhoodAttention2d(GridSelfAttention):
    """Neighbourhood self-attention on a (batch, H, W, dim) grid; ``kernel_size`` must not exceed H or W."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, int] = 7,
        qkv_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.kernel_size = as_pair("kernel_size", kernel_size)
        self.backend = backend

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        _, height, width = check_grid(x, self.dim)
        _check_kernel(self.kernel_size, (height, width))
        return height, width

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        return neighborhood_attention(query, key, value, grid, self.kernel_size, backend=self.backend)
