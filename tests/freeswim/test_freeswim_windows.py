"""Inward window geometry (attnctl.core.windows): borders, corners, odd and even grids, exact window sizes."""

from __future__ import annotations

import pytest
import torch

from attnctl.core.windows import (
    covers_grid,
    grid_coordinates,
    inward_starts,
    resolve_window,
    window_bounds,
    window_keep_mask,
)


def test_hand_checked_axis_of_ten_with_window_five():
    # FreeSwim reference notes, Sec. 8: N = 10, k = 5, start = clamp(i - 2, 0, 5)
    start, stop = window_bounds(10, 5)
    assert start.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 5, 5]
    assert (stop - start).tolist() == [5] * 10
    clipped_start, clipped_stop = window_bounds(10, 5, inward=False)
    assert clipped_start.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert (clipped_stop - 1).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]


@pytest.mark.parametrize(
    ("size", "window", "cases"),
    [
        (68, 31, {0: 0, 15: 0, 16: 1, 52: 37, 67: 37}),  # FreeSwim 1080p rows
        (120, 53, {0: 0, 26: 0, 27: 1, 93: 67, 119: 67}),  # FreeSwim 1080p columns
    ],
)
def test_freeswim_1080p_borders(size, window, cases):
    starts = inward_starts(size, window)
    assert {i: int(starts[i]) for i in cases} == cases


@pytest.mark.parametrize(("size", "window"), [(7, 3), (8, 3), (9, 4), (10, 5), (11, 11), (6, 1), (12, 6)])
def test_every_query_sees_exactly_the_window_and_contains_itself(size, window):
    start, stop = window_bounds(size, window)
    positions = torch.arange(size)
    assert torch.all(stop - start == window)
    assert torch.all((start >= 0) & (stop <= size))
    assert torch.all((start <= positions) & (positions < stop))
    steps = start[1:] - start[:-1]
    assert torch.all((steps == 0) | (steps == 1))  # non-decreasing, at most one per query
    half = window // 2
    interior = positions[half : size - (window - half) + 1]
    assert torch.equal(start[interior], interior - half)  # centred away from the borders


@pytest.mark.parametrize(
    ("grid", "window"),
    [((3, 7, 8), (None, 3, 5)), ((2, 6, 9), (2, 4, 3)), ((5, 5), (3, 3)), ((4, 9), (4, 2)), ((13,), (6,))],
)
def test_multi_axis_mask_has_exactly_the_window_product_per_query(grid, window):
    sizes = resolve_window(grid, window)
    keep = window_keep_mask(grid, window)
    expected = torch.tensor(sizes).prod()
    assert torch.all(keep.sum(dim=1) == expected)
    assert torch.all(keep.diagonal())


def test_corner_query_window_is_the_corner_block():
    grid, window = (1, 6, 7), (1, 3, 3)
    keep = window_keep_mask(grid, window).view(42, 1, 6, 7)
    corner = torch.zeros(1, 6, 7, dtype=torch.bool)
    corner[:, :3, :3] = True
    assert torch.equal(keep[0], corner)  # query (0, 0, 0)
    far = torch.zeros(1, 6, 7, dtype=torch.bool)
    far[:, 3:, 4:] = True
    assert torch.equal(keep[41], far)  # query (0, 5, 6)


def test_clipped_ablation_sees_fewer_keys_at_borders():
    grid, window = (2, 6, 6), (None, 3, 3)
    clipped = window_keep_mask(grid, window, inward=False).sum(dim=1).view(2, 6, 6)
    assert clipped[0, 0, 0] == 2 * 2 * 2 and clipped[0, 2, 3] == 2 * 3 * 3


def test_window_covering_the_grid_is_full_attention():
    grid = (3, 4, 5)
    assert covers_grid(grid, resolve_window(grid, (3, 4, 5)))
    assert bool(window_keep_mask(grid, (None, 4, 5)).all())
    assert resolve_window(grid, (None, 9, 31), allow_full=True) == (3, 4, 5)


def test_raster_order_is_first_axis_slowest():
    coords = grid_coordinates((2, 3, 4))
    assert coords[:5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0]]
    assert coords[12].tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("grid", "window", "message"),
    [
        ((4, 4), (5, 3), r"window\[0\]=5 is larger than grid\[0\]=4.*allow_full"),
        ((4, 4), (3,), "one size per grid axis"),
        ((4, 4), (0, 3), r"window\[0\]=0 must be a positive integer"),
        ((4, 4), (2.5, 3), r"window\[0\]=2.5"),
        ((1, 2, 3, 4), (1, 1, 1, 1), "1 to 3 positive sizes"),
    ],
)
def test_bad_windows_raise_value_errors_naming_the_argument(grid, window, message):
    with pytest.raises(ValueError, match=message):
        resolve_window(grid, window)
