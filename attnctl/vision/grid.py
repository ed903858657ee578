"""Token grids and the shared multi-head projection of the vision modules.

Convention for every module in :mod:`attnctl.vision`: tokens form a channels-last grid ``(batch, H, W, dim)``;
per-head tensors use SDPA's layout with the grid flattened in raster order, ``(batch, heads, H*W, head_dim)``.
CrossViT works on sequences ``(batch, 1 + tokens, dim)`` with the CLS token first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_positive(name: str, value: int) -> int:
    """``value`` if it is a positive int, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_heads(dim: int, num_heads: int) -> None:
    """A ValueError unless ``dim`` and ``num_heads`` are positive ints and the heads split ``dim`` evenly."""
    check_positive("dim", dim)
    check_positive("num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")


def as_pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """``(value, value)`` for an int, else the (height, width) pair itself; both entries positive integers."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return check_positive(name, pair[0]), check_positive(name, pair[1])


def check_grid(x: torch.Tensor, dim: int, name: str = "x") -> tuple[int, int, int]:
    """(batch, H, W) of a channels-last grid ``x`` of shape (batch, H, W, dim), else a ValueError."""
    if x.ndim != 4 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} must be a channels-last token grid (batch, H, W, {dim}); got {tuple(x.shape)}"
        )
    return x.shape[0], x.shape[1], x.shape[2]


def check_divides(name: str, size: int, grid: tuple[int, int]) -> None:
    """ValueError unless ``size`` divides both grid sides (block, window and pooling layouts need it)."""
    if grid[0] % size or grid[1] % size:
        raise ValueError(
            f"{name}={size} must divide the token grid {grid[0]}x{grid[1]}; "
            "pad or resize the input to a multiple"
        )


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, ..., heads*head_dim) -> (batch, heads, tokens, head_dim), grid flattened in raster order."""
    batch, channels = x.shape[0], x.shape[-1]
    x = x.reshape(batch, -1, num_heads, channels // num_heads)  # (batch, tokens, heads, head_dim)
    return x.transpose(1, 2)


def merge_heads(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(batch, heads, H*W, head_dim) -> (batch, H, W, heads*head_dim)."""
    batch, heads, _, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, grid[0], grid[1], heads * head_dim)


def to_blocks(x: torch.Tensor, grid: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """(batch, heads, H*W, d) -> (batch, heads, blocks, bh*bw, d): non-overlapping blocks in raster order."""
    batch, heads, _, dim = x.shape
    rows, cols = grid[0] // block[0], grid[1] // block[1]
    x = x.reshape(batch, heads, rows, block[0], cols, block[1], dim)
    return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, rows * cols, block[0] * block[1], dim)


def from_blocks(x: torch.Tensor, grid: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: (batch, heads, blocks, bh*bw, d) -> (batch, heads, H*W, d)."""
    batch, heads, _, _, dim = x.shape
    rows, cols = grid[0] // block[0], grid[1] // block[1]
    x = x.reshape(batch, heads, rows, cols, block[0], block[1], dim)
    return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, grid[0] * grid[1], dim)


def blockwise_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA per block, (batch, heads, blocks, n_q, d) with keys (batch, heads, blocks, n_k, d) -> like query.

    Runs as one 4-D call, (batch, heads*blocks, n, d): on CPU only 4-D unmasked inputs take the fused kernel;
    5-D inputs fall back to the math path, which materialises every block's logits. ``mask``: (blocks, 1, n_k)
    boolean keep-mask or None; ``scale`` multiplies the logits (None: 1/sqrt(d)).
    """
    batch, heads, blocks = query.shape[:3]
    if mask is not None:
        mask = mask.repeat(heads, 1, 1)  # (heads*blocks, 1, n_k), heads outer as in flatten(1, 2)
    out = F.scaled_dot_product_attention(
        query.flatten(1, 2), key.flatten(1, 2), value.flatten(1, 2), mask, scale=scale
    )
    return out.view(batch, heads, blocks, *out.shape[-2:])


def naive_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The slow oracle: softmax(Q K^T * scale + mask) V with explicit probabilities (boolean keep-mask);
    ``scale`` defaults to 1/sqrt(d)."""
    logits = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1) @ value


class GridSelfAttention(nn.Module):
    """Multi-head self-attention over a (batch, H, W, dim) grid; subclasses choose the kernel, :meth:`attend`.

    The projections are the standard ViT ones (one ``qkv`` linear, one output ``proj``), so weights move
    between the local variants and :class:`FullGridAttention` with ``load_state_dict``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """The kernel: (batch, heads, H*W, head_dim) each -> (batch, heads, H*W, head_dim)."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Validate ``x`` and the grid for this kernel; returns (H, W)."""
        _, height, width = check_grid(x, self.dim)
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H, W, dim)."""
        grid = self.check_input(x)
        query, key, value = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(self.attend(query, key, value, grid), grid))


class FullGridAttention(GridSelfAttention):
    """Plain global self-attention over the whole grid: the baseline every local variant reduces to."""

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, key, value)
