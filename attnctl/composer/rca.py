"""Region-constrained cross-attention (RCA, PrimeComposer Sec. 3.3; reference notes Sec. 4).

Chosen text tokens may only be attended to from query positions inside their region: for a query outside the
region the token's logit becomes ``-inf`` before the softmax, which renormalises the row over the other tokens
(``p'_ij = p_ij / (1 - sum_subject p_ij)``). Rows inside the region and every other token are untouched. The
constraint is a boolean keep-mask fused into SDPA through the core's ``logits_bias`` hook, so the fast kernel keeps
running; the region is resized to each layer's token grid from ``call.grid`` (non-square grids included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core import AttentionCall, AttentionControl
from .geometry import Grid

RowSelector = Callable[[AttentionCall], slice]


def all_rows(call: AttentionCall) -> slice:
    """Every row of the batch (no classifier-free guidance, or a branch run on its own)."""
    return slice(None)


def declared_rows(part: str) -> RowSelector:
    """The rows each pass declares as ``part`` (``call.rows[part]``, :mod:`attnctl.core.rows`), never a guess
    from the batch size: a pass that declares no layout, or not ``part``, is an error."""

    def select(call: AttentionCall) -> slice:
        if call.rows is None:
            raise ValueError(f"layer {call.layer.name}: the pass declares no batch rows, so the {part!r} rows are "
                             "unknown; declare them with controller.declared(branch, rows)")
        return call.rows[part]

    return select


#: The conditional rows of a pass: the ``cond`` part of a ``[uncond, cond]`` guidance batch, or the whole batch
#: where the pass declares only ``cond`` (guidance off).
conditional_rows = declared_rows("cond")


def call_device(call: AttentionCall) -> torch.device:
    """The device of the attention module's weights (CPU when the call has no module, as in unit tests)."""
    parameter = next(call.module.parameters(), None) if call.module is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


@dataclass(frozen=True)
class TokenRegion:
    """Text tokens (positions in the encoder sequence) and the region they are confined to, per token grid."""

    tokens: tuple[int, ...]
    region: Callable[[Grid], torch.Tensor]  # grid (gh, gw) -> (gh, gw) bool


def rca_keep_mask(regions: Sequence[tuple[Sequence[int], torch.Tensor]], key_len: int) -> torch.Tensor | None:
    """(queries, keys) keep-mask for flat regions ``(queries,)``: token ``j`` of a region is dropped for the queries
    outside it. ``None`` when nothing is dropped (an all-ones region, or no tokens), so the call stays stock."""
    keep = None
    for tokens, region in regions:
        tokens = list(tokens)
        if not tokens or bool(region.all()):
            continue
        if keep is None:
            keep = torch.ones(region.numel(), key_len, dtype=torch.bool)
        keep[:, tokens] &= region.view(-1, 1)
    return keep


class RegionConstrainedCrossAttention(AttentionControl):
    """Confine each :class:`TokenRegion`'s tokens to its region in the cross-attention layers.

    Args:
        regions: the token sets and their regions.
        rows: which batch rows are constrained (e.g. :data:`conditional_rows`; the unconditional rows stay stock).
        branch: act only while ``controller.branch`` equals this (``None``: always).
        first_token: the first position a region may name: 1 where position 0 is CLIP's start token, 0 for T5.
    """

    def __init__(self, regions: Sequence[TokenRegion], rows: RowSelector = all_rows, branch: str | None = None,
                 first_token: int = 1):
        for region in regions:
            if any(token < first_token for token in region.tokens):
                raise ValueError(f"token indices {region.tokens} must be >= {first_token}"
                                 + (": position 0 is the start token" if first_token else ""))
        self.regions = list(regions)
        self.rows = rows
        self.branch = branch
        self._masks: dict[tuple[Grid, int], torch.Tensor | None] = {}

    def applies_to(self, call: AttentionCall) -> bool:
        if not call.is_cross or call.grid is None or len(call.grid) != 2:
            return False
        return self.branch is None or call.branch == self.branch

    def keep_mask(self, grid: Grid, key_len: int) -> torch.Tensor | None:
        """(queries, keys) keep-mask on ``grid``, cached per grid and key length."""
        key = (tuple(grid), key_len)
        if key not in self._masks:
            flat = [(r.tokens, r.region(tuple(grid)).reshape(-1)) for r in self.regions]
            self._masks[key] = rca_keep_mask(flat, key_len)
        return self._masks[key]

    def logits_bias(self, call: AttentionCall, query_len: int, key_len: int) -> torch.Tensor | None:
        """Cross-attention: a (batch, 1, q, k) keep-mask. Joint attention (SD3, Flux): the same mask on the
        image-query x text-key block, every other entry kept, so text queries and image-image attention stay
        stock (the rule for text queries: they are never constrained)."""
        image_queries, text_keys = (call.cross(torch.empty(query_len, key_len, device="meta")).shape
                                    if call.is_joint else (query_len, key_len))  # fmt: skip
        keep = self.keep_mask(call.grid, text_keys)
        if keep is None:
            return None
        mask = torch.ones(call.batch_size, 1, image_queries, text_keys, dtype=torch.bool, device=call_device(call))
        mask[self.rows(call)] = keep.to(mask.device)  # (batch, 1, q, k): constrained rows get the keep-mask
        return call.joint_bias(mask, query_len, key_len) if call.is_joint else mask
