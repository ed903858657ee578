"""HiLo attention (LITv2: Pan, Cai, Zhuang 2022, "Fast Vision Transformers with HiLo Attention", Sec. 3.2).

The heads are split in two groups. Hi-Fi heads, ``(1 - alpha) * num_heads`` of them, capture high
frequencies with self-attention inside non-overlapping ``window_size`` windows. Lo-Fi heads,
``alpha * num_heads``, capture low frequencies: every query attends to keys and values projected from the
``pool_size`` average-pooled grid. The two outputs, each with its own projection, are concatenated along
channels.

LITv2 ties the pooling kernel to the window size ``s``; here ``pool_size`` defaults to ``window_size`` but can
be set apart. As in LITv2, ``window_size=1`` (its last stage) makes every head a Lo-Fi head over the unpooled
grid: plain global multi-head self-attention (1x1 windows would let each token attend only to itself).
With ``pool_size=1`` and a window covering the grid, HiLo is plain multi-head self-attention whose Hi-Fi
heads use ``h_qkv`` and Lo-Fi heads ``l_q``/``l_kv``, followed by the block-diagonal output projection
``diag(h_proj, l_proj)`` (tested).

Parameters are named and laid out as in the LITv2 release (``h_qkv``, ``h_proj``, ``l_q``, ``l_kv``,
``l_proj``; q, k, v and heads in that order along the output channels), so its state dicts load unchanged.
The release takes (batch, H*W, dim) tokens with ``H, W`` and pads grids the window does not divide; this
module takes a (batch, H, W, dim) grid and refuses such grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grid import check_divides, check_grid, check_heads, check_positive, merge_heads, split_heads
from .halo import halo_attention


class HiLoAttention(nn.Module):
    """HiLo attention on a (batch, H, W, dim) grid; ``window_size`` and ``pool_size`` must divide H and W."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 2,
        alpha: float = 0.5,
        pool_size: int | None = None,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (the share of Lo-Fi heads), got {alpha!r}")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = check_positive("window_size", window_size)
        self.pool_size = check_positive("pool_size", window_size if pool_size is None else pool_size)
        head_dim = dim // num_heads
        # LITv2 rounds the Lo-Fi share down; window_size=1 makes every head a (global) Lo-Fi head
        self.lo_heads = num_heads if self.window_size == 1 else int(num_heads * alpha)
        self.hi_heads = num_heads - self.lo_heads
        hi_dim, lo_dim = self.hi_heads * head_dim, self.lo_heads * head_dim
        if self.hi_heads:
            self.h_qkv = nn.Linear(dim, 3 * hi_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(hi_dim, hi_dim)
        if self.lo_heads:
            self.l_q = nn.Linear(dim, lo_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * lo_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(lo_dim, lo_dim)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Window self-attention of the Hi-Fi heads: (batch, H, W, dim) -> (batch, H, W, hi_dim)."""
        grid = (x.shape[1], x.shape[2])
        query, key, value = (split_heads(t, self.hi_heads) for t in self.h_qkv(x).chunk(3, dim=-1))
        out = halo_attention(query, key, value, grid, block=self.window_size, halo=0)
        return self.h_proj(merge_heads(out, grid))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of every query to the pooled grid: (batch, H, W, dim) -> (batch, H, W, lo_dim)."""
        grid = (x.shape[1], x.shape[2])
        query = split_heads(self.l_q(x), self.lo_heads)
        if self.pool_size > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.pool_size).permute(0, 2, 3, 1)  # (batch, H/p, W/p, dim)
        key, value = (split_heads(t, self.lo_heads) for t in self.l_kv(x).chunk(2, -1))
        return self.l_proj(merge_heads(F.scaled_dot_product_attention(query, key, value), grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H, W, dim): Hi-Fi channels first, then Lo-Fi channels."""
        _, height, width = check_grid(x, self.dim)
        parts = []
        if self.hi_heads:
            check_divides("window_size", self.window_size, (height, width))
            parts.append(self.hifi(x))
        if self.lo_heads:
            check_divides("pool_size", self.pool_size, (height, width))
            parts.append(self.lofi(x))
        return torch.cat(parts, dim=-1)
