"""Bi-level routing attention (BiFormer: Zhu et al. 2023, "BiFormer: Vision Transformer with Bi-Level Routing
Attention", Sec. 3.2).

1. Region routing: the grid is cut into ``S x S`` regions; region-level queries and keys are the means of each
   region's token queries and keys (eq. 2: A^r = Q^r (K^r)^T); every region keeps the indices of its ``topk``
   most affine regions (eq. 3: I^r = topkIndex(A^r)).
2. Token attention: each region's queries attend to the tokens of its routed regions, gathered into dense
   (topk * region_tokens) key and value blocks (eq. 4), so both levels are plain dense matrix products.
3. Local context enhancement (LCE, eq. 5): a depthwise convolution of the values is added to the output.

Routing is hard and non-differentiable (the paper's default). With ``topk`` equal to the number of regions
every query sees every key, so token attention is full attention (the gathered order does not change the
softmax).

:class:`BiLevelRoutingAttention` follows the BiFormer release's conventions by default, so its checkpoints
load unchanged and reproduce: logits scaled by ``dim ** -0.5`` (the full channel width, not the head width;
pass ``qk_scale=head_dim ** -0.5`` for the usual multi-head scaling), an LCE kernel of 5 (the released
models' ``side_dwconv``), and the release's parameter names ``qkv.qkv``, ``lepe``, ``wo``. Not covered: the
release's optional key/value down-sampling (its released models use none), learnable or soft routing, and
its separate ``qk_dim``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .grid import (
    blockwise_sdpa,
    check_divides,
    check_grid,
    check_heads,
    check_positive,
    from_blocks,
    merge_heads,
    naive_attention,
    split_heads,
    to_blocks,
)


def _region_size(grid: tuple[int, int], regions_per_side: int) -> tuple[int, int]:
    return grid[0] // regions_per_side, grid[1] // regions_per_side


def route_regions(
    query: torch.Tensor, key: torch.Tensor, grid: tuple[int, int], regions_per_side: int, topk: int
) -> torch.Tensor:
    """Eq. 2-3: (batch, regions, topk) indices of each region's most affine regions (all heads together).

    query, key: (batch, heads, H*W, head_dim). Routing is detached, as in the paper's default.
    """
    size = _region_size(grid, regions_per_side)
    region_q = to_blocks(query.detach(), grid, size).mean(dim=3)  # (batch, heads, regions, d)
    region_k = to_blocks(key.detach(), grid, size).mean(dim=3)
    batch, heads, regions, dim = region_q.shape
    region_q = region_q.transpose(1, 2).reshape(batch, regions, heads * dim)  # concatenated heads
    region_k = region_k.transpose(1, 2).reshape(batch, regions, heads * dim)
    affinity = region_q @ region_k.transpose(-1, -2)  # (batch, regions, regions)
    return affinity.topk(topk, dim=-1).indices


def bilevel_routing_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    regions_per_side: int,
    topk: int,
    scale: float | None = None,
    reference: bool = False,
) -> torch.Tensor:
    """Eq. 2-4 without LCE: (batch, heads, H*W, head_dim) -> same; ``regions_per_side`` must divide H, W.

    ``scale`` multiplies the token logits (None: 1/sqrt(head_dim)). ``reference=True`` runs the slow oracle
    instead: the same routing as a dense (H*W)^2 token mask (:func:`routing_mask`) and explicit softmax.
    """
    _check_routing(regions_per_side, topk)
    check_divides("regions_per_side", regions_per_side, grid)
    size = _region_size(grid, regions_per_side)
    index = route_regions(query, key, grid, regions_per_side, topk)  # (batch, regions, topk)
    if reference:
        return naive_attention(query, key, value, routing_mask(index, grid, regions_per_side)[:, None], scale)
    queries = to_blocks(query, grid, size)  # (batch, heads, regions, t, d)
    batch, heads, regions, tokens, dim = queries.shape
    gather_index = index[:, None, :, :, None, None].expand(batch, heads, regions, topk, tokens, dim)

    def gathered(x: torch.Tensor) -> torch.Tensor:
        # (batch, heads, regions, t, d) -> (batch, heads, regions, topk*t, d): each region's routed tokens
        source = to_blocks(x, grid, size)[:, :, None].expand(batch, heads, regions, regions, tokens, dim)
        return source.gather(3, gather_index).reshape(batch, heads, regions, topk * tokens, dim)

    out = blockwise_sdpa(queries, gathered(key), gathered(value), scale=scale)
    return from_blocks(out, grid, size)


def routing_mask(index: torch.Tensor, grid: tuple[int, int], regions_per_side: int) -> torch.Tensor:
    """(batch, H*W, H*W) boolean: token q may see token k iff k's region is among q's routed regions."""
    rows = torch.arange(grid[0], device=index.device).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=index.device).repeat(grid[0])
    region = rows // (grid[0] // regions_per_side) * regions_per_side + cols // (grid[1] // regions_per_side)
    regions = regions_per_side**2
    routed = torch.zeros(index.shape[0], regions, regions, dtype=torch.bool, device=index.device)
    routed.scatter_(2, index, True)  # (batch, region of q, region of k)
    return routed[:, region][:, :, region]


def _check_routing(regions_per_side: int, topk: int) -> None:
    check_positive("regions_per_side", regions_per_side)
    check_positive("topk", topk)
    if topk > regions_per_side**2:
        raise ValueError(
            f"topk={topk} exceeds the number of regions {regions_per_side**2} "
            f"(regions_per_side={regions_per_side})"
        )


class BiLevelRoutingAttention(nn.Module):
    """BiFormer's attention on a (batch, H, W, dim) grid with ``regions_per_side**2`` regions.

    ``lce_kernel`` is the depthwise convolution size of LCE (odd; 5 as in the released models; 0 turns LCE
    off, making the module pure routed attention). ``qk_scale`` multiplies the token logits: None is the
    release's ``dim ** -0.5``. ``regions_per_side`` must divide H and W.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        regions_per_side: int = 7,
        topk: int = 4,
        lce_kernel: int = 5,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if lce_kernel < 0 or (lce_kernel and lce_kernel % 2 == 0):
            raise ValueError(f"lce_kernel must be 0 (off) or an odd positive size, got {lce_kernel!r}")
        _check_routing(regions_per_side, topk)
        if qk_scale is not None and not qk_scale > 0:
            raise ValueError(f"qk_scale must be positive (or None for dim ** -0.5), got {qk_scale!r}")
        self.dim, self.num_heads, self.regions_per_side, self.topk = dim, num_heads, regions_per_side, topk
        self.scale = dim**-0.5 if qk_scale is None else qk_scale
        # names as the release's state dicts: qkv.qkv (q, k, v along the outputs), lepe (LCE), wo (output)
        self.qkv = nn.Sequential(OrderedDict(qkv=nn.Linear(dim, 3 * dim, bias=qkv_bias)))
        self.lepe = (
            nn.Conv2d(dim, dim, lce_kernel, padding=lce_kernel // 2, groups=dim) if lce_kernel else None
        )
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H, W, dim)."""
        _, height, width = check_grid(x, self.dim)
        grid = (height, width)
        query, key, value = self.qkv(x).chunk(3, dim=-1)  # each (batch, H, W, dim)
        out = bilevel_routing_attention(
            *(split_heads(t, self.num_heads) for t in (query, key, value)),
            grid,
            self.regions_per_side,
            self.topk,
            self.scale,
        )
        out = merge_heads(out, grid)
        if self.lepe is not None:
            out = out + self.lepe(value.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.wo(out)
