"""Blocked local self-attention with a halo (HaloNet: Vaswani et al. 2021, "Scaling Local Self-Attention for
Parameter Efficient Visual Backbones", Sec. 2.2).

The grid is cut into non-overlapping ``block x block`` query blocks; each block attends to the keys of the
same block grown by ``halo`` tokens on every side, ``(block + 2*halo)^2`` keys. Key windows are read with
``Tensor.unfold`` (views, no index tensors), so cost is O(H*W * (block + 2*halo)^2), never (H*W)^2.

Borders: the paper zero-pads keys and values and lets queries attend to the padding (Sec. 4.3 finds the
unmasked form slightly better in training). A training-free module should not invent tokens, so the default
masks padding out (``mask_padding=True``), which makes a block or halo covering the grid equal full attention;
``mask_padding=False`` keeps the paper's zero padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import (
    GridSelfAttention,
    blockwise_sdpa,
    check_divides,
    check_grid,
    check_positive,
    from_blocks,
    naive_attention,
    to_blocks,
)


def _check_halo(halo: int) -> int:
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ValueError(f"halo must be a non-negative integer, got {halo!r}")
    return halo


def _halo_windows(x: torch.Tensor, grid: tuple[int, int], block: int, halo: int) -> torch.Tensor:
    """(batch, heads, H*W, d) -> (batch, heads, blocks, (block+2*halo)^2, d): zero-padded block windows."""
    batch, heads, _, dim = x.shape
    size = block + 2 * halo
    x = x.reshape(batch, heads, grid[0], grid[1], dim).permute(0, 1, 4, 2, 3)  # (batch, heads, d, H, W)
    x = F.pad(x, (halo, halo, halo, halo))
    x = x.unfold(3, size, block).unfold(4, size, block)  # (batch, heads, d, rows, cols, size, size)
    x = x.permute(0, 1, 3, 4, 5, 6, 2)  # (batch, heads, rows, cols, size, size, d)
    return x.reshape(batch, heads, -1, size * size, dim)


def halo_key_mask(
    grid: tuple[int, int], block: int, halo: int, device: torch.device | None = None
) -> torch.Tensor:
    """(blocks, (block+2*halo)^2) boolean: which slots of each block's window are real tokens, not padding."""
    ones = torch.ones(1, 1, grid[0] * grid[1], 1, device=device)
    return _halo_windows(ones, grid, block, halo)[0, 0, :, :, 0] > 0


def halo_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    block: int,
    halo: int,
    mask_padding: bool = True,
    reference: bool = False,
) -> torch.Tensor:
    """Blocked local attention (HaloNet Sec. 2.2). Shapes: (batch, heads, H*W, head_dim) -> same.

    ``block`` must divide both grid sides. ``halo=0`` is non-overlapping window attention (Swin without the
    shift; LITv2's Hi-Fi branch). ``reference=True`` runs the slow oracle instead: a dense (H*W)^2 mask
    (:func:`halo_dense_mask`), padding as explicit zero keys and values.
    """
    check_positive("block", block)
    _check_halo(halo)
    check_divides("block", block, grid)
    if reference:
        return _dense_oracle(query, key, value, halo_dense_mask(grid, block, halo), (block + 2 * halo) ** 2,
                             mask_padding)
    queries = to_blocks(query, grid, (block, block))  # (batch, heads, blocks, block^2, d)
    keys, values = _halo_windows(key, grid, block, halo), _halo_windows(value, grid, block, halo)
    if not (mask_padding and halo):
        return from_blocks(blockwise_sdpa(queries, keys, values), grid, (block, block))
    real = halo_key_mask(grid, block, halo, query.device)  # (blocks, slots)
    border = ~real.all(dim=-1)
    out = torch.empty_like(queries)
    # interior blocks see no padding and take the fused kernel; only border blocks need the mask
    for part, mask in ((~border, None), (border, real[border][:, None, :])):
        if part.any():
            out[:, :, part] = blockwise_sdpa(queries[:, :, part], keys[:, :, part], values[:, :, part], mask)
    return from_blocks(out, grid, (block, block))


def halo_dense_mask(grid: tuple[int, int], block: int, halo: int) -> torch.Tensor:
    """(H*W, H*W) boolean: the keys of each query's block grown by ``halo`` (the slow oracle's dense mask)."""
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    cols = torch.arange(grid[1]).repeat(grid[0])

    def in_window(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        start = (q_pos // block * block)[:, None]  # first row/column of the query's block
        return (k_pos[None, :] >= start - halo) & (k_pos[None, :] < start + block + halo)

    return in_window(rows, rows) & in_window(cols, cols)


def _dense_oracle(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, slots: int,
                  mask_padding: bool) -> torch.Tensor:  # fmt: skip
    """Explicit softmax under the dense ``keep`` mask (H*W, H*W); without ``mask_padding`` every query also sees
    one zero key and value per slot of its ``slots``-key window that falls outside the grid."""
    if mask_padding:
        return naive_attention(query, key, value, keep.to(query.device))
    missing = slots - keep.sum(-1)  # (H*W,)
    pad = int(missing.max())
    zeros = key.new_zeros(*key.shape[:2], pad, key.shape[-1])
    padding = torch.arange(pad)[None, :] < missing[:, None]  # (H*W, pad)
    full_keep = torch.cat([keep, padding], dim=-1).to(query.device)
    return naive_attention(query, torch.cat([key, zeros], -2), torch.cat([value, zeros], -2), full_keep)


class HaloAttention2d(GridSelfAttention):
    """HaloNet blocked local self-attention on a (batch, H, W, dim) grid; ``block_size`` must divide H, W."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        block_size: int,
        halo_size: int,
        mask_padding: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.block_size = check_positive("block_size", block_size)
        self.halo_size = _check_halo(halo_size)
        self.mask_padding = mask_padding

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        _, height, width = check_grid(x, self.dim)
        check_divides("block_size", self.block_size, (height, width))
        return height, width

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        return halo_attention(query, key, value, grid, self.block_size, self.halo_size, self.mask_padding)
