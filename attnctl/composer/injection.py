"""The Correlation Diffuser's self-attention and the injection of its logits into the generator.

PrimeComposer Sec. 3.2 (reference notes Sec. 3.2-3.3). In the correlation pass every self-attention layer attends
only to the subject: keys and values are the reference stream's features at the subject cells ``R`` (the core's
``context`` hook hands the layer only those M cells), and the pre-softmax logits ``L`` (heads x N x M) of the query
row are recorded. Queries come from the
composite stream (paper; the batch is ``[composite, reference]`` and keys/values are taken from the reference row)
or from the reference stream itself (the release; the batch is ``[reference]``). In the generator, the conditional
rows' self-attention logits get ``L`` written at the subject cells ``S`` of the composite: every query's logits
towards ``S`` (row injection), then the logits from ``S`` towards every key by ``L^T`` (column injection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core import AttentionCall, AttentionControl, ContextSets
from .geometry import Grid, GridLayout
from .rca import RowSelector, conditional_rows, declared_rows

CORRELATION = "correlation"
GENERATOR = "generator"

LayoutAt = Callable[[Grid], GridLayout]


@dataclass
class CorrelationMaps:
    """The last correlation pass's logits per self-attention layer name, each (heads, N, M)."""

    logits: dict[str, torch.Tensor] = field(default_factory=dict)


def correlation_cells(layout: GridLayout) -> torch.Tensor:
    """(M,) flat indices of the key cells the correlation pass attends to: the subject cells ``R``, or the whole
    reference box where the subject has no cell on this grid (the release's fallback)."""
    if layout.num_subject_cells:
        return layout.reference_cells
    return torch.nonzero(layout.reference_box_mask().reshape(-1)).view(-1)


def inject_logits_(logits: torch.Tensor, correlation: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Row then column injection (Sec. 3.2), in place: ``logits[..., :, S] = L`` then ``logits[..., S, :] = L^T``.

    ``logits`` (..., heads, N, N), ``correlation`` (heads, N, M), ``cells`` (M,) flat indices of ``S``. On ``S x S``
    the column write wins: ``out[S[m], S[m']] = L[S[m'], m]``.
    """
    logits[..., :, cells] = correlation.to(logits.dtype)
    logits[..., cells, :] = correlation.transpose(-1, -2).to(logits.dtype)
    return logits


def inject_logits(logits: torch.Tensor, correlation: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """:func:`inject_logits_` on a copy."""
    return inject_logits_(logits.clone(), correlation, cells)


class CorrelationRecorder(AttentionControl):
    """Subject-only self-attention in the correlation pass, recording the query row's logits per layer.

    Args:
        layout_at: grid -> :class:`GridLayout`.
        maps: where the logits go.
        queries_from_composite: the pass declares ``[composite, reference]`` rows and the composite row's keys and
            values come from the reference row (paper); otherwise it declares ``[reference]`` only (release).
    """

    def __init__(self, layout_at: LayoutAt, maps: CorrelationMaps, queries_from_composite: bool) -> None:
        self.layout_at = layout_at
        self.maps = maps
        self.queries_from_composite = queries_from_composite

    def applies_to(self, call: AttentionCall) -> bool:
        return (not call.is_cross and call.branch == CORRELATION and call.grid is not None
                and len(call.grid) == 2)

    def _query_rows(self, call: AttentionCall) -> slice:
        """The declared rows whose queries are recorded: ``composite`` (paper) or ``reference`` (release)."""
        if self.queries_from_composite and "composite" not in (call.rows or ()):
            names = list(call.rows.names) if call.rows is not None else None
            raise ValueError(f"the correlation pass expects a [composite, reference] batch; it declares {names}")
        return declared_rows("composite" if self.queries_from_composite else "reference")(call)

    def context(self, call: AttentionCall, encoder_hidden_states: torch.Tensor) -> ContextSets:
        """Keys and values from the subject cells of the declared ``reference`` row only, so the logits are
        (N x M), as in the release."""
        self._query_rows(call)  # checks the declared layout before any slicing
        source = encoder_hidden_states[declared_rows("reference")(call)]  # (1, N, C)
        cells = correlation_cells(self.layout_at(call.grid)).to(source.device)
        subject = source[:, cells]  # (rows, N, C) -> (rows, M, C)
        return ContextSets.single(subject.expand(call.batch_size, -1, -1))

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_logits(self, call: AttentionCall, logits: torch.Tensor) -> torch.Tensor:
        if self.layout_at(call.grid).num_subject_cells:
            self.maps.logits[call.layer.name] = logits[self._query_rows(call)][0].clone()  # (heads, N, M)
        else:
            self.maps.logits.pop(call.layer.name, None)
        return logits


class SubjectInjection(AttentionControl):
    """Write the recorded correlation logits into the generator's self-attention at the subject cells ``S``.

    Off until the pipeline sets ``active``; a layer whose grid has no subject cell is left stock.
    """

    def __init__(self, layout_at: LayoutAt, maps: CorrelationMaps, rows: RowSelector = conditional_rows) -> None:
        self.layout_at = layout_at
        self.maps = maps
        self.rows = rows
        self.active = False

    def applies_to(self, call: AttentionCall) -> bool:
        if not self.active or call.is_cross or call.branch != GENERATOR or call.grid is None or len(call.grid) != 2:
            return False
        return self.layout_at(call.grid).num_subject_cells > 0

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_logits(self, call: AttentionCall, logits: torch.Tensor) -> torch.Tensor:
        correlation = self.maps.logits.get(call.layer.name)
        if correlation is None:
            raise RuntimeError(f"no correlation logits were recorded for layer {call.layer.name}; run the "
                               "correlation pass before an injecting generator pass")
        cells = self.layout_at(call.grid).target_cells.to(logits.device)
        out = logits.clone()
        inject_logits_(out[self.rows(call)], correlation, cells)  # a slice of the batch is a view: written in place
        return out
