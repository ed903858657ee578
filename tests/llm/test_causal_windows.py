"""The causal window geometry in attnctl.core: bounds, dense mask, and its relation to FreeSwim's windows."""

from __future__ import annotations

import pytest
import torch

from attnctl.core.causal_windows import (
    causal_window_bounds,
    causal_window_keep_mask,
    check_causal_window,
    covers_sequence,
)


def brute_force_keep(q_len: int, kv_len: int, window: int, sinks: int) -> torch.Tensor:
    keep = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for row in range(q_len):
        position = kv_len - q_len + row
        for key in range(kv_len):
            in_window = position - window < key <= position
            keep[row, key] = in_window or (key < sinks and key <= position)
    return keep


@pytest.mark.parametrize(
    ("q_len", "kv_len", "window", "sinks"),
    [
        (9, 9, 3, 0),
        (9, 9, 3, 2),
        (1, 12, 4, 1),
        (5, 12, 4, 6),
        (7, 7, 1, 0),
        (6, 6, 10, 3),
    ],
)
def test_keep_mask_matches_the_definition(q_len, kv_len, window, sinks):
    assert torch.equal(
        causal_window_keep_mask(q_len, kv_len, window, sinks), brute_force_keep(q_len, kv_len, window, sinks)
    )


def test_bounds_of_prefill_and_decoding():
    start, stop = causal_window_bounds(5, 5, 2)
    assert start.tolist() == [0, 0, 1, 2, 3] and stop.tolist() == [1, 2, 3, 4, 5]
    start, stop = causal_window_bounds(1, 10, 4)
    assert start.tolist() == [6] and stop.tolist() == [10]


def test_window_covering_the_sequence_is_causal_attention():
    assert covers_sequence(8, 8) and not covers_sequence(9, 8)
    assert torch.equal(causal_window_keep_mask(8, 8, 8), torch.ones(8, 8, dtype=torch.bool).tril())


def test_window_is_the_causal_half_of_freeswims_clipped_window():
    windows = pytest.importorskip("attnctl.core.windows")
    size, window = 16, 4
    clipped = windows.window_keep_mask((size,), (2 * window - 1,), inward=False)
    assert torch.equal(
        causal_window_keep_mask(size, size, window), clipped & torch.ones(size, size, dtype=torch.bool).tril()
    )


@pytest.mark.parametrize(("window", "sinks"), [(0, 0), (-2, 0), (3, -1), (2.5, 0), (True, 0)])
def test_bad_window_or_sinks_raise(window, sinks):
    with pytest.raises(ValueError, match="window|sinks"):
        check_causal_window(window, sinks)


def test_queries_longer_than_keys_raise():
    with pytest.raises(ValueError, match="q_len=6"):
        causal_window_bounds(6, 5, 2)
