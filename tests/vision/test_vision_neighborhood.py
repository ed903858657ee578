"""Neighbourhood attention on the shared inward-window kernel: oracles, border rule, full cover, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.grid import FullGridAttention, naive_attention
from attnctl.vision.neighborhood import (
    NeighborhoodAttention2d,
    cls_window_attention,
    cls_window_attention_reference,
    neighborhood_attention,
    neighborhood_attention_reference,
)


def _qkv(grid, seed=0, dim=8):
    torch.manual_seed(seed)
    return torch.randn(3, 2, 2, grid[0] * grid[1], dim).unbind(0)


@pytest.mark.parametrize(("grid", "kernel"), [((12, 10), 3), ((12, 10), (5, 3)), ((9, 16), 4), ((20, 20), 7)])
def test_matches_the_dense_window_oracle(grid, kernel):
    q, k, v = _qkv(grid)
    out = neighborhood_attention(q, k, v, grid, kernel, tile=4)
    torch.testing.assert_close(
        out, neighborhood_attention_reference(q, k, v, grid, kernel), rtol=1e-5, atol=1e-6
    )


def test_each_query_sees_the_na_window_written_from_the_paper():
    grid, kernel = (9, 7), 5
    q, k, v = _qkv(grid)
    out = neighborhood_attention(q, k, v, grid, kernel)
    for row, col in [(0, 0), (4, 3), (8, 6), (1, 5)]:
        rows = range(
            min(max(row - 2, 0), 9 - 5), min(max(row - 2, 0), 9 - 5) + 5
        )  # clamp(x - k//2, 0, n - k)
        cols = range(min(max(col - 2, 0), 7 - 5), min(max(col - 2, 0), 7 - 5) + 5)
        keys = torch.tensor([r * 7 + c for r in rows for c in cols])
        query = row * 7 + col
        expected = naive_attention(q[:, :, query : query + 1], k[:, :, keys], v[:, :, keys])
        torch.testing.assert_close(out[:, :, query : query + 1], expected, rtol=1e-5, atol=1e-6)


def test_corner_window_is_shifted_inward_not_clipped():
    grid = (8, 8)
    q, k, v = _qkv(grid)
    base = neighborhood_attention(q, k, v, grid, 3)[:, :, 0]
    far_corner, outside = k.clone(), k.clone()
    far_corner[:, :, 2 * 8 + 2] += 1.0  # (2, 2): inside the corner query's inward 3x3 window
    outside[:, :, 3 * 8] += 1.0  # (3, 0): outside it
    assert not torch.allclose(neighborhood_attention(q, far_corner, v, grid, 3)[:, :, 0], base)
    torch.testing.assert_close(neighborhood_attention(q, outside, v, grid, 3)[:, :, 0], base)


def test_kernel_covering_the_grid_is_full_attention():
    q, k, v = _qkv((6, 9))
    torch.testing.assert_close(
        neighborhood_attention(q, k, v, (6, 9), (6, 9)), naive_attention(q, k, v), rtol=1e-5, atol=1e-6
    )
    torch.manual_seed(0)
    local = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=8)
    full = FullGridAttention(dim=16, num_heads=2)
    full.load_state_dict(local.state_dict())
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(local(x), full(x), rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="kernel_size must be a positive integer, got 0"):
        NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=0)
    with pytest.raises(
        ValueError, match=r"kernel_size must be an int or a \(height, width\) pair, got \(3, 3, 3\)"
    ):
        NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=(3, 3, 3))
    with pytest.raises(ValueError, match=r"kernel_size=\(7, 7\) exceeds the token grid 5x9"):
        NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=7)(torch.randn(1, 5, 9, 16))
    with pytest.raises(ValueError, match="tile must be a positive integer, got 0"):
        neighborhood_attention(*_qkv((4, 4)), (4, 4), 3, tile=0)


@pytest.mark.parametrize(("grid", "window"), [((6, 5), (3, 3)), ((8, 8), (4, 6)), ((7, 9), (7, 2))])
def test_cls_window_attention_matches_the_dense_oracle(grid, window):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 1 + grid[0] * grid[1], 8).unbind(0)
    out = cls_window_attention(q, k, v, grid, window, tile=3)
    torch.testing.assert_close(
        out, cls_window_attention_reference(q, k, v, grid, window), rtol=1e-5, atol=1e-6
    )
    scaled = cls_window_attention(q, k, v, grid, window, scale=0.2)
    torch.testing.assert_close(
        scaled, cls_window_attention_reference(q, k, v, grid, window, scale=0.2), rtol=1e-5, atol=1e-6
    )


def test_cls_window_covering_or_exceeding_the_grid_is_full_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 1 + 25, 8).unbind(0)
    for window in [(5, 5), (9, 12)]:
        torch.testing.assert_close(
            cls_window_attention(q, k, v, (5, 5), window), naive_attention(q, k, v), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match=r"query has 26 tokens; a CLS token plus grid=\(4, 5\) needs 21"):
        cls_window_attention(q, k, v, (4, 5), (3, 3))


def test_reference_backend_of_the_shared_kernel_agrees():
    q, k, v = _qkv((9, 11))
    tiled = neighborhood_attention(q, k, v, (9, 11), (3, 5))
    torch.testing.assert_close(
        neighborhood_attention(q, k, v, (9, 11), (3, 5), backend="reference"), tiled, rtol=1e-5, atol=1e-6
    )
