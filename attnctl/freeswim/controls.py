"""FreeSwim's run state and its two attention controls (window self-attention, full-branch cross-attention).

Each transformer pass runs in one of three modes, chosen by :meth:`FreeSwimState.begin_pass` before the pass;
the pipeline declares the rows of each pass on its controller (:func:`pass_rows`, :func:`freeswim_pass`) and the
controls read them as ``call.rows["window"]`` and ``call.rows["full"]``:

* ``"dual"``: the batch stacks the window branch and the full branch (the same latents), ``B`` rows each. Self-attention is windowed on the window rows and full on the full rows (FreeSwim's dual path); the
  text cross-attention is computed from the full rows only and given to both (the *override*); on a guided
  branch with caching on, each layer's cross-attention output is stored.
* ``"cached"``: batch ``B``, window rows only; each cross-attention layer returns the output stored on the last
  dual pass of the same branch (FreeSwim's cross-attention cache).
* ``"window"``: batch ``B``, window self-attention and the stock cross-attention (the unconditional pass by
  default, or everything with the dual path off).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..core.controls import AttentionCall, AttentionControl, Kernel
from ..core.rows import BatchRows, RowLayout, stacked
from ..core.window_attention import window_attention
from ..core.windows import covers_grid, resolve_window
from .config import FreeSwimConfig

DUAL, CACHED, WINDOW = "dual", "cached", "window"
DUAL_PARTS = ("window", "full")  # a dual pass: the window branch, then the full branch, B rows each
DUAL_ROWS = stacked(*DUAL_PARTS)
WINDOW_ROWS = stacked("window")  # cached and window passes: every row is a window row


def pass_rows(mode: str) -> RowLayout:
    """The row layout of a pass in ``mode``, for ``controller.declared(rows=...)``."""
    return DUAL_ROWS if mode == DUAL else WINDOW_ROWS


class FreeSwimState:
    """FreeSwim's state on one transformer for one pipeline call: the current pass, the cache, a run log."""

    def __init__(self, config: FreeSwimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.mode, self.step, self.branch = WINDOW, -1, None
        self.cache: dict[tuple[str | None, str], torch.Tensor] = {}  # (branch, layer name) -> (B, tokens, dim)
        self.cache_home: dict[tuple[str | None, str], torch.device] = {}  # where each entry was computed
        self.full_branch_runs: list[tuple[int, str | None, str]] = []  # (step, branch, layer) per full self-attn

    @property
    def stores_cache(self) -> bool:
        return self.config.cache_interval > 1

    @property
    def cache_nbytes(self) -> int:
        """Bytes the cross-attention cache holds now."""
        return sum(stored.numel() * stored.element_size() for stored in self.cache.values())

    def store(self, key: tuple[str | None, str], rows: torch.Tensor) -> None:
        """Keep a copy of ``rows`` (B, tokens, dim) under ``key`` on ``config.cache_device``.

        The buffer of the previous store is reused, so a refresh allocates nothing; host buffers for a GPU are
        pinned so the copy is asynchronous (ordered on the stream, like the replay that reads it).
        """
        device = torch.device(self.config.cache_device) if self.config.cache_device else rows.device
        buffer = self.cache.get(key)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (rows.shape, rows.dtype, device):
            pin = device.type == "cpu" and rows.device.type == "cuda"
            buffer = self.cache[key] = torch.empty(rows.shape, dtype=rows.dtype, device=device, pin_memory=pin)
        buffer.copy_(rows, non_blocking=True)
        self.cache_home[key] = rows.device

    def replay(self, key: tuple[str | None, str]) -> torch.Tensor | None:
        """The rows stored under ``key``, on the device they were computed on (None if nothing is stored)."""
        stored = self.cache.get(key)
        return None if stored is None else stored.to(self.cache_home[key], non_blocking=True)

    def begin_pass(self, step: int, branch: str | None) -> str:
        """Choose and record the mode of the next pass of ``branch`` at denoising ``step`` (0-based).

        A branch is guided when the dual path is on and it is the conditional (or only) pass, or
        ``guide_uncond`` is set. A guided pass is dual every ``cache_interval`` steps, and whenever its branch
        has nothing cached yet; otherwise it reuses the cache.
        """
        config = self.config
        guided = config.dual_path and (branch != "uncond" or config.guide_uncond)
        if not guided:
            mode = WINDOW
        elif step % config.cache_interval == 0 or not any(key[0] == branch for key in self.cache):
            mode = DUAL
        else:
            mode = CACHED
        self.mode, self.step, self.branch = mode, step, branch
        return mode

    def window_for(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The (frames, rows, cols) window on ``grid``: all frames; an axis smaller than the window is full attention
        with ``config.allow_full``, else a ``ValueError``."""
        return resolve_window(grid, (None, *self.config.window), allow_full=self.config.allow_full)

    def check_branch(self, call: AttentionCall) -> None:
        """The pass must run in the cache context of the branch it was planned for (caches are per branch)."""
        if call.branch != self.branch:
            raise RuntimeError(
                f"FreeSwim planned a {self.branch!r} pass but layer {call.layer.name} runs in branch "
                f"{call.branch!r}; wrap the transformer call in transformer.cache_context({self.branch!r})"
            )


def dual_rows(call: AttentionCall) -> BatchRows:
    """The declared window and full rows of a dual pass; a ``RuntimeError`` if the pass declared none."""
    rows = call.rows
    if rows is None or rows.names != DUAL_PARTS:
        raise RuntimeError(
            f"a dual FreeSwim pass must declare its rows ('window', 'full'); layer {call.layer.name} sees "
            f"{None if rows is None else rows.names}: run the pass inside freeswim_pass(...), or "
            "controller.declared(rows=pass_rows(mode))"
        )
    return rows


@contextmanager
def freeswim_pass(model: Any, controller: Any, state: FreeSwimState, step: int, branch: str) -> Iterator[str]:
    """Run the ``with`` body as one FreeSwim pass of ``branch`` at ``step``: plan its mode, declare its rows on
    ``controller`` and enter ``model``'s cache context of ``branch``. Yields the mode; a dual pass stacks the
    window rows and then the full rows (the same inputs)."""
    mode = state.begin_pass(step, branch)
    with controller.declared(rows=pass_rows(mode)), model.cache_context(branch, step_index=step):
        yield mode


class WindowSelfAttention(AttentionControl):
    """Self-attention with inward windows (window rows) and full attention (full rows), FreeSwim's scale."""

    def __init__(self, state: FreeSwimState) -> None:
        self.state = state

    def applies_to(self, call: AttentionCall) -> bool:
        return not call.is_cross and call.grid is not None

    def reset(self) -> None:
        self.state.reset()

    def kernel(self, call: AttentionCall) -> Kernel | None:
        state, config = self.state, self.state.config
        window = state.window_for(call.grid)
        dual = state.mode == DUAL
        if not dual and covers_grid(call.grid, window) and config.attention_scale is None:
            return None  # stock attention, bit for bit
        if dual:
            state.check_branch(call)
            rows = dual_rows(call)
            windows, fulls = rows["window"], rows["full"]
        else:
            windows = slice(None)  # every row is a window row

        def attend_windows(query, key, value, attn_mask):
            if attn_mask is not None:
                raise ValueError(f"layer {call.layer.name}: FreeSwim's window kernel takes no attention mask")
            scale = config.softmax_scale(query.shape[-1])
            windowed = window_attention(
                query[windows], key[windows], value[windows], call.grid, window,
                scale=scale, backend=config.backend, tile=config.tile,
            )
            if not dual:
                return windowed
            state.full_branch_runs.append((state.step, call.branch, call.layer.name))
            full = F.scaled_dot_product_attention(query[fulls], key[fulls], value[fulls], scale=scale)
            return torch.cat([windowed, full])  # batch order of DUAL_PARTS

        return attend_windows


class FullBranchCrossAttention(AttentionControl):
    """Cross-attention override (dual passes) and cache (stored on dual passes, replayed on cached passes)."""

    def __init__(self, state: FreeSwimState) -> None:
        self.state = state

    def applies_to(self, call: AttentionCall) -> bool:
        return call.is_cross

    def reset(self) -> None:
        self.state.reset()

    def cached_output(self, call: AttentionCall) -> torch.Tensor | None:
        if self.state.mode != CACHED:
            return None
        self.state.check_branch(call)
        stored = self.state.replay((call.branch, call.layer.name))
        if stored is None or stored.shape[0] != call.batch_size:
            raise RuntimeError(f"no cached cross-attention of batch {call.batch_size} for layer {call.layer.name}")
        return stored

    def kernel(self, call: AttentionCall) -> Kernel | None:
        if self.state.mode != DUAL:
            return None
        self.state.check_branch(call)
        fulls = dual_rows(call)["full"]

        def full_rows_for_both(query, key, value, attn_mask):
            if attn_mask is not None:
                raise ValueError(f"layer {call.layer.name}: FreeSwim's cross-attention override takes no mask")
            full = F.scaled_dot_product_attention(query[fulls], key[fulls], value[fulls])
            return torch.cat([full, full])  # the window rows get the full rows' output

        return full_rows_for_both

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        """On dual passes the full rows' whole output (text attention and, on Wan 2.1 I2V, the image-context term
        the processor adds) replaces the window rows', and is stored when caching."""
        if self.state.mode != DUAL:
            return output
        full = output[dual_rows(call)["full"]]
        if self.state.stores_cache:
            self.state.store((call.branch, call.layer.name), full)
        return torch.cat([full, full])  # the window rows get the full rows' output


def freeswim_controls(state: FreeSwimState) -> list[AttentionControl]:
    """The controls that implement FreeSwim on one transformer, sharing ``state``."""
    return [WindowSelfAttention(state), FullBranchCrossAttention(state)]
