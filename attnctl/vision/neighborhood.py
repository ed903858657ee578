"""2-D neighbourhood attention (Hassani et al. 2023, "Neighborhood Attention Transformer", Sec. 3.1) on the
shared inward-window code: geometry from :mod:`attnctl.core.windows`, kernels from
:func:`attnctl.core.window_attention.window_attention` (tiled SDPA on CPU; flex or NATTEN on GPUs).

Each query attends to a ``kernel x kernel`` neighbourhood centred on it; at the borders the window is shifted
inward, never clipped, so every query sees exactly ``kernel_h * kernel_w`` keys (NA's border rule, the same as
FreeSwim's; a 2-D grid is the (H, W) case of the shared 1-3 axis geometry). The CPU kernel tiles queries in
``tile x tile`` squares and attends each to the union of its windows with dense SDPA blocks, never an
(H*W)^2 matrix.
A kernel covering the grid is full attention. Even kernels are allowed (k//2 before, k//2 - 1 after); NATTEN
accepts even kernels too from version 0.21 (older versions: odd only), but whether it places the extra key
on the same side is not tested here (NATTEN is not installed in this project's CI), so compare before
mixing backends with even kernels. Dilation is not supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.lse import attention_with_lse, merge_attention
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
    The patch part is the shared window kernel over the patches alone, returning its log-sum-exp; the CLS key is
    merged in exactly afterwards (:func:`attnctl.core.lse.merge_attention`), so it costs the patch-only window
    kernel plus one key per query. ``backend`` as in :func:`~attnctl.core.window_attention.window_attention`,
    except ``natten`` (no log-sum-exp).
    """
    window = resolve_window(grid, window, allow_full=True)
    tokens = query.shape[2]
    patches = grid[0] * grid[1]
    if tokens != 1 + patches:
        raise ValueError(f"query has {tokens} tokens; a CLS token plus grid={grid} needs {1 + patches}")
    tiles = (check_positive("tile", tile),) * 2
    cls_out = F.scaled_dot_product_attention(query[:, :, :1], key, value, scale=scale)  # (batch, heads, 1, d)
    patch_query = query[:, :, 1:]
    windowed, windowed_lse = window_attention(
        patch_query, key[:, :, 1:], value[:, :, 1:], grid, window, scale=scale, backend=backend, tile=tiles,
        return_lse=True,
    )  # (batch, heads, H*W, d), (batch, heads, H*W)
    from_cls, cls_lse = attention_with_lse(patch_query, key[:, :, :1], value[:, :, :1], scale=scale)
    return torch.cat([cls_out, merge_attention(windowed, windowed_lse, from_cls, cls_lse)], dim=2)


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
