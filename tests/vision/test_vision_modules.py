"""Every grid attention module keeps its input's (batch, H, W, dim) shape and dtype (float32, float64, bf16)."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision import (
    BiLevelRoutingAttention,
    GatedPositionalSelfAttention,
    HaloAttention2d,
    HiLoAttention,
    NeighborhoodAttention2d,
)

# module factory, input shape (batch, H, W, dim)
MODULES = {
    "biformer": (lambda: BiLevelRoutingAttention(dim=16, num_heads=4, regions_per_side=2, topk=2), (2, 4, 6, 16)),
    "convit": (lambda: GatedPositionalSelfAttention(dim=16, num_heads=4), (2, 3, 5, 16)),
    "halo": (lambda: HaloAttention2d(dim=16, num_heads=4, block_size=2, halo_size=1), (3, 6, 4, 16)),
    "hilo": (lambda: HiLoAttention(dim=32, num_heads=4, window_size=2), (2, 6, 4, 32)),
    "neighborhood": (lambda: NeighborhoodAttention2d(dim=16, num_heads=4, kernel_size=3), (2, 5, 7, 16)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_shape_and_dtype(name, dtype):
    build, shape = MODULES[name]
    out = build().to(dtype)(torch.randn(*shape, dtype=dtype))
    assert out.shape == shape and out.dtype == dtype
