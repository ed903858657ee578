"""Cross-attention token fusion (CrossViT: Chen, Fan, Panda 2021, "CrossViT: Cross-Attention Multi-Scale
Vision Transformer for Image Classification", Sec. 3.3).

Two branches (small and large patches) exchange information through their CLS tokens only. For branch l:
the CLS token is projected to the other branch's width (f^l), used as the **single query** over the
concatenation ``[f^l(CLS^l); patches^s]`` (eq. 5-6, cost linear in the number of tokens), added back
residually, projected home (g^l, eq. 7) and put in front of branch l's own patch tokens.

Sequences are ``(batch, 1 + tokens, dim)`` with the CLS token at index 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grid import check_heads, check_positive, split_heads


def _check_sequence(x: torch.Tensor, dim: int, name: str) -> None:
    if x.ndim != 3 or x.shape[-1] != dim or x.shape[1] < 2:
        raise ValueError(
            f"{name} must be (batch, 1 + tokens, {dim}) with the CLS token first and at least one patch "
            "token; "
            f"got {tuple(x.shape)}"
        )


class ClsCrossAttention(nn.Module):
    """Eq. 5-6: the CLS token (index 0) attends to every token: (batch, 1+N, dim) -> (batch, 1, dim)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.dim, self.num_heads = dim, num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, self.dim, "x")
        query = split_heads(self.q(x[:, :1]), self.num_heads)  # (batch, heads, 1, head_dim)
        key, value = (split_heads(t, self.num_heads) for t in self.kv(x).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(query, key, value)  # (batch, heads, 1, head_dim)
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], 1, self.dim))


def _projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """f^l and g^l of eq. 5 and 7: LayerNorm, GELU, Linear."""
    return nn.Sequential(nn.LayerNorm(dim_in), nn.GELU(), nn.Linear(dim_in, dim_out))


class CrossViTFusion(nn.Module):
    """Cross-attention fusion of two branches, both ways (Sec. 3.3, Fig. 3(d)).

    ``dims``/``num_heads`` are the (small, large) branch widths and head counts; the cross-attention of a CLS
    token runs at the width and head count of the branch it visits. Returns both sequences with new CLS tokens
    and their patch tokens unchanged.
    """

    def __init__(self, dims: tuple[int, int], num_heads: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        if len(dims) != 2 or len(num_heads) != 2:
            raise ValueError(
                f"dims and num_heads must give two branches each, got {dims!r} and {num_heads!r}"
            )
        self.dims = tuple(check_positive("dims", d) for d in dims)
        self.to_other = nn.ModuleList([_projection(dims[i], dims[1 - i]) for i in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dims[1 - i]) for i in range(2)])
        self.attentions = nn.ModuleList(
            [ClsCrossAttention(dims[1 - i], num_heads[1 - i], qkv_bias) for i in range(2)]
        )
        self.back_home = nn.ModuleList([_projection(dims[1 - i], dims[i]) for i in range(2)])

    def fuse(self, branch: int, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Eq. 5-7 for one branch: a new CLS for ``own`` (batch, 1+N, dim_own) from ``other``'s patches."""
        cls = self.to_other[branch](own[:, :1])  # (batch, 1, dim_other)
        joint = torch.cat([cls, other[:, 1:]], dim=1)  # (batch, 1 + N_other, dim_other)
        cls = cls + self.attentions[branch](self.norms[branch](joint))
        return torch.cat([self.back_home[branch](cls), own[:, 1:]], dim=1)

    def forward(self, small: torch.Tensor, large: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, 1+Ns, dims[0]), (batch, 1+Nl, dims[1]) -> the same shapes with fused CLS tokens."""
        _check_sequence(small, self.dims[0], "small")
        _check_sequence(large, self.dims[1], "large")
        if small.shape[0] != large.shape[0]:
            raise ValueError(
                f"small and large must share the batch size, got {small.shape[0]} and {large.shape[0]}"
            )
        return self.fuse(0, small, large), self.fuse(1, large, small)
