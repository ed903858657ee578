"""Gated positional self-attention (ConViT: d'Ascoli et al. 2021, "ConViT: Improving Vision Transformers with
Soft Convolutional Inductive Biases", Sec. 3).

Each head mixes content attention and positional attention with a learned gate (eq. 4)::

    A_h = (1 - sigmoid(lambda_h)) softmax(Q_h K_h^T / sqrt(d)) + sigmoid(lambda_h) softmax(v_h^T r)

where ``r_{qk} = (delta_col, delta_row, ||delta||^2)`` with ``delta`` the key position minus the query
position (eq. 5's relative encoding, channels in the ConViT release's order, so its ``pos_proj`` weights load
unchanged). The locality initialisation (Sec. 3, "Adaptive attention span") sets
``v_h = alpha * (2 Delta_col, 2 Delta_row, -1)`` so that head h attends around the offset ``Delta_h``:
``v_h^T r = -alpha ||delta - Delta_h||^2 + const``. The centres form a ``sqrt(heads) x sqrt(heads)`` square
in the release's head order (row offset fastest: head ``i + side * j`` is centred on row ``i``, column ``j``
of the square). The value projection starts as the identity.

Parameter names and shapes are the release's (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``).
Remaining differences from the release: heads beyond the square start with zero ``pos_proj`` rows (uniform
positional attention) where the release leaves small random weights; grids need not be square here; the
module takes a (batch, H, W, dim) grid, the release (batch, H*W, dim) tokens of a square grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .grid import check_grid, check_heads, merge_heads, split_heads


def relative_positions(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(H*W, H*W, 3) features ``(delta_col, delta_row, ||delta||^2)``, delta = key minus query position."""
    rows = torch.arange(grid[0], device=device).repeat_interleave(grid[1]).float()
    cols = torch.arange(grid[1], device=device).repeat(grid[0]).float()
    delta_row = rows[None, :] - rows[:, None]  # (query, key)
    delta_col = cols[None, :] - cols[:, None]
    return torch.stack([delta_col, delta_row, delta_row**2 + delta_col**2], dim=-1)


def local_centres(num_heads: int) -> list[tuple[float, float]]:
    """Each head's attention centre ``Delta_h`` (row, col), on a square of ``floor(sqrt(heads))``-a-side, in
    the release's head order (head ``i + side * j``: row ``i``, column ``j``)."""
    side = math.isqrt(num_heads)
    middle = (side - 1) / 2
    return [(row - middle, col - middle) for col in range(side) for row in range(side)]


class GatedPositionalSelfAttention(nn.Module):
    """ConViT's GPSA on a (batch, H, W, dim) grid; positions are relative, so any grid size works."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        locality_strength: float = 1.0,
        local_init: bool = True,
        gate_init: float = 1.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if locality_strength <= 0:
            raise ValueError(
                f"locality_strength must be positive (alpha of eq. 5), got {locality_strength!r}"
            )
        self.dim, self.num_heads = dim, num_heads
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.pos_proj = nn.Linear(3, num_heads)  # the v_pos vectors, one row per head
        self.gating_param = nn.Parameter(torch.full((num_heads,), float(gate_init)))
        self.proj = nn.Linear(dim, dim)
        if local_init:
            self.locality_init(locality_strength)

    @torch.no_grad()
    def locality_init(self, strength: float) -> None:
        """Sec. 3: v_h = alpha (2 Delta_col, 2 Delta_row, -1), zero bias, identity value projection."""
        self.v.weight.copy_(torch.eye(self.dim))
        self.pos_proj.weight.zero_()
        self.pos_proj.bias.zero_()
        for head, (row, col) in enumerate(local_centres(self.num_heads)):
            self.pos_proj.weight[head] = strength * torch.tensor([2 * col, 2 * row, -1.0])

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 4: the gated attention probabilities, (batch, H, W, dim) -> (batch, heads, H*W, H*W)."""
        query, key = (split_heads(t, self.num_heads) for t in self.qk(x).chunk(2, dim=-1))
        content = (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1)
        positions = relative_positions((x.shape[1], x.shape[2]), x.device).to(x.dtype)
        positional = self.pos_proj(positions).permute(2, 0, 1).softmax(dim=-1)  # (heads, H*W, H*W)
        gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)
        mixed = (1 - gate) * content + gate * positional
        return mixed / mixed.sum(
            dim=-1, keepdim=True
        )  # both parts sum to one; renormalise rounding as ConViT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, dim) -> (batch, H, W, dim)."""
        _, height, width = check_grid(x, self.dim)
        value = split_heads(self.v(x), self.num_heads)
        return self.proj(merge_heads(self.attention(x) @ value, (height, width)))
