"""Causal sliding windows over a token sequence, with attention-sink tokens: the geometry, nothing else.

The query at position ``x`` attends the keys ``[max(0, x - window + 1), x]`` (itself and the ``window - 1``
tokens before it) plus the first ``sinks`` tokens, the attention sinks of StreamingLLM (Xiao et al. 2023,
Sec. 3). The window is the causal half of the clipped centred window of size ``2 * window - 1`` that
:func:`attnctl.core.windows.window_bounds` gives with ``inward=False``; it is not an inward window, because a
causal query has no future keys to shift towards. A window of at least ``x + 1`` keys is full causal
attention.

Queries are the last ``q_len`` of ``kv_len`` positions (bottom-right aligned, as with a KV cache), so one
function covers prefill (``q_len == kv_len``) and decoding (``q_len == 1``).
"""

from __future__ import annotations

import torch


def check_causal_window(window: int, sinks: int = 0) -> None:
    """ValueError unless ``window >= 1`` and ``sinks >= 0`` are integers."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(
            f"window={window!r} must be a positive integer (the query's own token counts as one)"
        )
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks={sinks!r} must be a non-negative integer (0 disables attention sinks)")


def causal_window_bounds(q_len: int, kv_len: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: ``(start, stop)`` of its window of keys, stop exclusive, each (q_len,) int64."""
    check_causal_window(window)
    if not 1 <= q_len <= kv_len:
        raise ValueError(f"q_len={q_len} must be between 1 and kv_len={kv_len}")
    positions = torch.arange(kv_len - q_len, kv_len)
    return (positions - window + 1).clamp(min=0), positions + 1


def covers_sequence(kv_len: int, window: int) -> bool:
    """Whether every query's window holds all keys up to it, i.e. the window is plain causal attention."""
    return window >= kv_len


def causal_window_keep_mask(
    q_len: int, kv_len: int, window: int, sinks: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """(q_len, kv_len) bool: ``mask[i, j]`` is True where query i attends key j (window or sink, never a
    future key).

    Dense and O(q_len * kv_len): the definition the blocked kernels are tested against.
    """
    check_causal_window(window, sinks)
    start, stop = causal_window_bounds(q_len, kv_len, window)
    keys = torch.arange(kv_len)[None, :]
    keep = (keys >= start[:, None]) & (keys < stop[:, None])
    keep |= (keys < sinks) & (keys < stop[:, None])
    return keep.to(device)
