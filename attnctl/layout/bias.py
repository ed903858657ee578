"""Attention-bias layout ("paint with words"; Balaji et al., eDiff-I, 2022, Sec. 4.3 and Fig. 7).

eDiff-I adds a user mask to the cross-attention logits, ``softmax((Q K^T + w' A) / sqrt(d))`` with
``w' = w * log(1 + sigma) * max(Q K^T)``: the bias is proportional to the largest logit and fades with the
noise level sigma. Here ``A`` is +1 for a phrase's tokens at the query cells inside its box and -1 outside it
(eDiff-I uses only the positive part), summed over regions. In the scaled logits ``L = Q K^T / sqrt(d)`` this is
``L + w log(1 + sigma) max(L) A``. Optionally the end-of-text and padding keys are dropped (inside the boxes or
everywhere), because with a causal text encoder they carry every phrase to every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..composer.geometry import Grid
from ..composer.rca import RowSelector, all_rows, call_device
from ..core import AttentionCall, AttentionControl
from .masks import Box, region_masks, special_keep_mask


def paint_matrix(masks: torch.Tensor, tokens: Sequence[Sequence[int]], key_len: int) -> torch.Tensor:
    """(queries, keys) float: ``A[q, j] = sum_r [j in T_r] (+1 if q in B_r else -1)``.

    ``masks`` is (regions, queries) bool, ``tokens[r]`` the key positions of region r's phrase.
    """
    matrix = torch.zeros(masks.shape[1], key_len)
    for mask, region_tokens in zip(masks, tokens):
        sign = mask.float() * 2 - 1  # (q,): +1 inside the box, -1 outside
        for token in region_tokens:
            matrix[:, token] += sign
    return matrix


def ediffi_bias(logits: torch.Tensor, matrix: torch.Tensor, strength: float, sigma: float) -> torch.Tensor:
    """``L + w log(1 + sigma) max(L) A`` with the max per (row, head) over the finite logits (eDiff-I's w').

    ``logits`` (batch, heads, q, k), ``matrix`` (q, k). The max is clamped at zero so a map whose logits are
    all negative is not pushed the wrong way (the paper assumes a positive max).
    """
    finite = logits.float().masked_fill(~torch.isfinite(logits), float("-inf"))
    peak = finite.amax(dim=(-2, -1), keepdim=True).clamp_min(0)  # (batch, heads, 1, 1)
    weight = strength * math.log1p(sigma) * peak
    return logits + (weight * matrix.to(logits.device)).to(logits.dtype)


class AttentionBiasLayout(AttentionControl):
    """Bias each phrase towards its box in the cross-attention logits (and optionally drop end/padding keys).

    Args:
        boxes: normalised ``(x0, y0, x1, y1)`` per region.
        tokens: key positions of each region's phrase.
        strength: eDiff-I's ``w``; 0 leaves the logits alone.
        sigma: the noise level of the step in progress (``call -> sigma``).
        active_steps: the bias acts on steps ``0 .. active_steps - 1`` (the schedule's cut-off).
        special_tokens: end-of-text and padding key positions, for ``mask_special``.
        mask_special: ``"off"``, ``"boxes"`` (drop them for queries inside any box) or ``"all"``; acts at every
            step, like a mask rather than a guidance term.
        rows: which batch rows are biased (the conditional half under classifier-free guidance).
    """

    def __init__(
        self,
        boxes: Sequence[Box],
        tokens: Sequence[Sequence[int]],
        strength: float,
        sigma: Callable[[AttentionCall], float],
        active_steps: int,
        special_tokens: Sequence[int] = (),
        mask_special: str = "off",
        rows: RowSelector = all_rows,
    ) -> None:
        self.boxes, self.tokens = list(boxes), [list(t) for t in tokens]
        self.strength, self.sigma, self.active_steps = float(strength), sigma, int(active_steps)
        self.special_tokens, self.mask_special, self.rows = list(special_tokens), mask_special, rows
        self._cache: dict[tuple[Grid, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def applies_to(self, call: AttentionCall) -> bool:
        return call.is_cross and call.grid is not None and len(call.grid) == 2

    def _biasing(self, call: AttentionCall) -> bool:
        return self.strength != 0 and call.step < self.active_steps

    def _matrices(self, grid: Grid, key_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(paint matrix, special-token keep-mask) on ``grid``, cached per grid and key length."""
        key = (tuple(grid), key_len)
        if key not in self._cache:
            masks = region_masks(self.boxes, grid)
            self._cache[key] = (paint_matrix(masks, self.tokens, key_len),
                                special_keep_mask(masks, self.special_tokens, key_len, self.mask_special))
        return self._cache[key]

    def logits_bias(self, call: AttentionCall, query_len: int, key_len: int) -> torch.Tensor | None:
        """The end/padding keep-mask on the image-query x text-key block (joint attention: the rest kept)."""
        image_queries, text_keys = _cross_shape(call, query_len, key_len)
        keep = self._matrices(call.grid, text_keys)[1]
        if keep is None:
            return None
        mask = torch.ones(call.batch_size, 1, image_queries, text_keys, dtype=torch.bool, device=call_device(call))
        mask[self.rows(call)] = keep.to(mask.device)  # (batch, 1, q, k)
        return call.joint_bias(mask, query_len, key_len) if call.is_joint else mask

    def needs_probs(self, call: AttentionCall) -> bool:
        return self._biasing(call)  # the bias scales with max(QK^T), so the logits must be formed

    def edit_logits(self, call: AttentionCall, logits: torch.Tensor) -> torch.Tensor:
        """eDiff-I's bias on the cross block of the chosen rows (joint attention: image queries x text keys)."""
        if not self._biasing(call):
            return logits
        edited = logits.clone()
        block = call.cross(edited[self.rows(call)])  # (rows, heads, image queries, text keys), a view
        matrix = self._matrices(call.grid, block.shape[-1])[0]
        block.copy_(ediffi_bias(block, matrix, self.strength, self.sigma(call)))
        return edited


def _cross_shape(call: AttentionCall, query_len: int, key_len: int) -> tuple[int, int]:
    """(image queries, text keys) of a call: the whole logits in cross-attention, a block in joint attention."""
    if not call.is_joint:
        return query_len, key_len
    return tuple(call.cross(torch.empty(query_len, key_len, device="meta")).shape)
