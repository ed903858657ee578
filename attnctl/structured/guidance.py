"""Structured cross-attention (Feng et al. 2023, Sec. 3.2): the phrase-aligned encodings and the control.

Notation follows the paper: ``C0`` is the full prompt's encoding, ``Ci`` the encoding of phrase i alone, and
``align(C0, Ci)`` is C0 with the phrase's token positions replaced by Ci's phrase tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..core.controls import AttentionCall, AttentionControl, ContextSets

StructMode = Literal["values", "keys"]
STRUCT_MODES = ("values", "keys")


@dataclass(frozen=True)
class PhraseEncoding:
    """One phrase's own encoding and where its tokens sit in the full prompt.

    ``token_start``/``token_end`` count prompt tokens from the first one; ``offset`` is that first token's
    position in the encoder sequence: 1 after CLIP's start token, 0 for T5, which has none.
    """

    embedding: torch.Tensor  # (tokens, dim): the phrase encoded alone, its first token at ``offset``
    token_start: int
    token_end: int
    offset: int = 1


def align(full: torch.Tensor, phrase: PhraseEncoding) -> torch.Tensor:
    """``align(C0, Ci)`` (Feng et al. 2023, Sec. 3.2): C0 with the phrase's positions
    ``offset+start .. offset+end-1`` taken from Ci's positions ``offset .. offset+end-start-1``.

    Shapes: full (tokens, dim) -> (tokens, dim). The start token, the other words, the end token and padding
    keep C0's values.
    """
    length = phrase.token_end - phrase.token_start
    first = phrase.offset
    if first + phrase.token_end > full.shape[0] or first + length > phrase.embedding.shape[0]:
        raise ValueError(f"phrase span [{phrase.token_start}, {phrase.token_end}) at offset {first} does not fit "
                         f"the prompt's {full.shape[0]} or the phrase's {phrase.embedding.shape[0]} encoded tokens")
    out = full.clone()
    out[first + phrase.token_start : first + phrase.token_end] = phrase.embedding[first : first + length].to(full)
    return out


def align_all(full: torch.Tensor, phrases: Sequence[PhraseEncoding]) -> torch.Tensor:
    """The "single" alignment S: every phrase substituted into one copy of C0, later phrases winning."""
    out = full
    for phrase in phrases:
        out = align(out, phrase)
    return out


def structured_sets(
    full: torch.Tensor, phrases_per_row: Sequence[Sequence[PhraseEncoding]], mode: StructMode
) -> ContextSets:
    """Key and value sets for a batch of conditional rows ``full`` (rows, tokens, dim).

    values mode (paper's default, "one key, many values"): keys {C0}, values {C0, align(C0, Ci)...}, equal
    weights. keys mode (conjunction, "many keys, one value"): keys {C0, align(C0, Ci)...}, values {S}.
    Rows with fewer phrases are padded with zero-weight copies of C0, so weights still sum to one per row.
    """
    num_sets = 1 + max((len(p) for p in phrases_per_row), default=0)
    sets = full[None].repeat(num_sets, 1, 1, 1)  # (sets, rows, tokens, dim)
    weights = torch.zeros(num_sets, full.shape[0], dtype=full.dtype, device=full.device)
    singles = full.clone()
    for row, phrases in enumerate(phrases_per_row):
        weights[: 1 + len(phrases), row] = 1.0 / (1 + len(phrases))
        for index, phrase in enumerate(phrases):
            sets[1 + index, row] = align(full[row], phrase)
        singles[row] = align_all(full[row], phrases)
    single_weight = torch.ones(1, full.shape[0], dtype=full.dtype, device=full.device)
    if mode == "values":
        return ContextSets(full[None], single_weight, sets, weights)
    return ContextSets(sets, weights, singles[None], single_weight)


def _pad_sets(sets: torch.Tensor, weights: torch.Tensor, num_sets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (sets, rows, ...) with zero-weight copies of set 0 up to ``num_sets``."""
    extra = num_sets - sets.shape[0]
    if extra == 0:
        return sets, weights
    sets = torch.cat([sets, sets[:1].expand(extra, *sets.shape[1:])])
    weights = torch.cat([weights, weights.new_zeros(extra, weights.shape[1])])
    return sets, weights


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place version counter; inference tensors (``torch.inference_mode``) have none, and identity is
    what the cache can check there."""
    return None if tensor.is_inference() else tensor._version


class StructuredControl(AttentionControl):
    """Feeds the phrase-aligned encodings to every cross-attention layer, for the conditional rows only.

    The unconditional rows of a classifier-free-guidance batch keep the stock context. Which rows are
    conditional is what the pipeline declared (``call.rows["cond"]``, e.g. from
    :func:`attnctl.core.rows.guidance_rows`); every other row is left stock. The aligned sets are rebuilt only
    when the encoder states or the declared rows change (normally once per call).
    """

    def __init__(self, phrases_per_row: Sequence[Sequence[PhraseEncoding]], mode: StructMode = "values") -> None:
        if mode not in STRUCT_MODES:
            raise ValueError(f"struct_mode={mode!r} is not one of {STRUCT_MODES} (or None for stock guidance)")
        self.phrases_per_row = [list(p) for p in phrases_per_row]
        self.mode = mode
        self._cache: tuple[torch.Tensor, int, ContextSets] | None = None

    @property
    def active(self) -> bool:
        return any(self.phrases_per_row)

    def reset(self) -> None:
        self._cache = None

    def applies_to(self, call: AttentionCall) -> bool:
        return call.is_cross and self.active

    def context(self, call: AttentionCall, encoder_hidden_states: torch.Tensor) -> ContextSets | None:
        # the cache holds the states tensor itself, so identity plus version means unchanged content
        cond = self._conditional_rows(call)
        if self._cache is not None:
            states, version, rows, sets = self._cache
            if states is encoder_hidden_states and version == _version(encoder_hidden_states) and rows == cond:
                return sets
        sets = self._build(encoder_hidden_states, cond)
        self._cache = (encoder_hidden_states, _version(encoder_hidden_states), cond, sets)
        return sets

    def _conditional_rows(self, call: AttentionCall) -> tuple[int, int]:
        """[start, stop) of the declared conditional rows, which must be one per prepared prompt row."""
        if call.rows is None or "cond" not in call.rows:
            raise ValueError(
                "structured guidance needs the pipeline to declare which rows are conditional: "
                "AttentionController(controls, rows=guidance_rows(n))"
            )
        start, stop, _ = call.rows["cond"].indices(call.batch_size)
        if stop - start != len(self.phrases_per_row):
            raise ValueError(
                f"cross-attention got {stop - start} conditional rows but structured guidance was prepared for "
                f"{len(self.phrases_per_row)} conditional rows; run the pipeline and the control on the same "
                "prompt batch"
            )
        return start, stop

    def _build(self, states: torch.Tensor, cond: tuple[int, int]) -> ContextSets:
        """Structured sets on the conditional rows, the stock context (padded with zero weights) on the others."""
        start, stop = cond
        sets = structured_sets(states[start:stop], self.phrases_per_row, self.mode)
        if (start, stop) == (0, states.shape[0]):
            return sets

        def stock(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
            single = ContextSets.single(rows)
            return (*_pad_sets(single.keys, single.key_weights, sets.keys.shape[0]),
                    *_pad_sets(single.values, single.value_weights, sets.values.shape[0]))  # fmt: skip

        parts = [(sets.keys, sets.key_weights, sets.values, sets.value_weights)]
        if start:
            parts.insert(0, stock(states[:start]))
        if stop < states.shape[0]:
            parts.append(stock(states[stop:]))
        return ContextSets(*(torch.cat(tensors, dim=1) for tensors in zip(*parts)))
