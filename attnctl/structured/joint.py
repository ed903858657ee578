"""Structured guidance on joint attention (SD3/3.5, Flux): attnctl's definition (docs/structured.md).

Feng et al. (2023, Sec. 3.2, "one key, many values") feed the image queries the mean of the values of C0 and of
each alignment ``align(C0, Ci)``, with the keys of C0. In a joint transformer the text stream changes from block
to block, so a phrase's values must come from the same block: every phrase runs through the transformer as an
extra batch row (same latents, timestep and pooled vector as its prompt's conditional row, its own text), and at
every joint layer the conditional rows' *image queries* read

    V' = V + 1/(1 + k) * sum_i (align(V, V_i) - V)        (k phrases; differs from V only on phrase tokens)

while their text queries, the unconditional rows and the phrase rows read the stock values. The phrase rows'
outputs are dropped after the transformer's forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..core.controls import AttentionCall, AttentionControl
from ..core.engine import sdpa
from ..core.rows import BatchRows, RowLayout

#: the transformer inputs that carry one row per batch element and are copied from a phrase's prompt row
_ROW_INPUTS = ("hidden_states", "pooled_projections", "timestep", "guidance")


@dataclass(frozen=True)
class JointPhrase:
    """One phrase of one conditional row: its extra batch row and where its tokens move.

    ``moves`` are ``(destination, source, length)`` in text-key positions: the prompt's tokens at
    ``destination ..`` take the phrase row's values at ``source ..`` (SD3 has two moves, CLIP and T5 rows).
    """

    row: int  # index among the phrase rows
    moves: tuple[tuple[int, int, int], ...]


def phrase_rows_layout(cond_rows: int, phrase_rows: int) -> RowLayout:
    """``[uncond, cond, phrases]`` (guided) or ``[cond, phrases]``: the batch the transformer sees (``[uncond,
    phrases]`` in the ``"uncond"`` pass of pipelines that run the halves apart, such as Flux's true CFG)."""

    def layout(batch_size: int, branch: str | None = None) -> BatchRows:
        guided = batch_size == 2 * cond_rows + phrase_rows
        if not guided and batch_size != cond_rows + phrase_rows:
            raise ValueError(f"structured guidance prepared {cond_rows} conditional and {phrase_rows} phrase rows "
                             f"but the transformer got a batch of {batch_size}")
        start = cond_rows if guided else 0
        name = "uncond" if branch == "uncond" and not guided else "cond"
        parts = ((("uncond", slice(0, start)),) if guided else ()) + (
            (name, slice(start, start + cond_rows)), ("phrases", slice(start + cond_rows, batch_size)))
        return BatchRows(batch_size, parts)

    return layout


@contextmanager
def appended_phrase_rows(model: torch.nn.Module, embeds: torch.Tensor, owners: Sequence[int],
                         cond_rows: int) -> Iterator[None]:
    """Run every forward of ``model`` with the phrase rows appended and drop their outputs afterwards.

    ``embeds`` (phrases, tokens, dim) are the phrases' text states as the transformer takes them
    (``encoder_hidden_states``); ``owners[i]`` is the conditional row phrase i belongs to, whose latents,
    timestep, pooled vector and guidance the phrase row copies.
    """
    batch = {}

    def before(module, args, kwargs):
        states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        size = states.shape[0]
        start = size - cond_rows  # the conditional rows come last: [uncond, cond] or [cond]
        index = torch.tensor([start + owner for owner in owners], device=states.device)
        kwargs = dict(kwargs)
        if "hidden_states" not in kwargs:
            kwargs["hidden_states"], args = states, args[1:]
        for name in _ROW_INPUTS:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size:
                kwargs[name] = torch.cat([value, value.index_select(0, index)])
        text = kwargs["encoder_hidden_states"]
        kwargs["encoder_hidden_states"] = torch.cat([text, embeds.to(text)])
        extra = kwargs.get("joint_attention_kwargs") or {}
        if "ip_adapter_image_embeds" in extra:  # an IP-Adapter's image rows (SD3: a tensor, Flux: one per adapter)
            images = extra["ip_adapter_image_embeds"]
            rows = [torch.cat([e, e.index_select(0, index)]) for e in (images if isinstance(images, list) else [images])]
            kwargs["joint_attention_kwargs"] = extra | {"ip_adapter_image_embeds": rows if isinstance(images, list)
                                                        else rows[0]}  # fmt: skip
        batch["size"] = size
        return args, kwargs

    def after(module, args, kwargs, output):
        size = batch["size"]
        if isinstance(output, tuple):
            return (output[0][:size], *output[1:])
        output.sample = output.sample[:size]
        return output

    handles = [model.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
               model.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class JointStructuredControl(AttentionControl):
    """Values mode on joint attention: the conditional rows' image queries read the phrase-aligned values.

    ``phrases_per_row[r]`` are the :class:`JointPhrase` of conditional row ``r``. The pipeline declares the rows
    with :func:`phrase_rows_layout` and appends the phrase rows with :func:`appended_phrase_rows`. Every joint
    layer with text keys takes part; Flux's true-CFG ``"uncond"`` pass stays stock.
    """

    def __init__(self, phrases_per_row: Sequence[Sequence[JointPhrase]]) -> None:
        self.phrases_per_row = [list(p) for p in phrases_per_row]

    def applies_to(self, call: AttentionCall) -> bool:
        return call.is_joint and call.is_cross and any(self.phrases_per_row) and "cond" in (call.rows or ())

    def aligned_values(self, value: torch.Tensor, rows: BatchRows, text: slice) -> torch.Tensor:
        """(cond rows, heads, tokens, head_dim): ``V'`` of the module docstring for every conditional row."""
        cond, phrases = rows["cond"], rows["phrases"]
        base = value[cond]
        aligned = base.clone()
        for r, row_phrases in enumerate(self.phrases_per_row):
            weight = 1.0 / (1 + len(row_phrases))
            for phrase in row_phrases:
                source = value[phrases.start + phrase.row]
                for destination, start, length in phrase.moves:
                    dst = slice(text.start + destination, text.start + destination + length)
                    src = slice(text.start + start, text.start + start + length)
                    aligned[r, :, dst] += weight * (source[:, src] - base[r, :, dst])
        return aligned

    def kernel(self, call: AttentionCall):
        rows, text, image = call.rows, call.text_keys, call.image_queries
        if rows is None or "phrases" not in rows:
            raise ValueError("joint structured guidance needs the phrase rows declared (phrase_rows_layout)")

        def run(query, key, value, mask):
            out = sdpa(query, key, value, mask)  # (batch, heads, tokens, head_dim): stock for every row
            cond = rows["cond"]
            cond_mask = None
            if mask is not None:
                cond_mask = (mask[cond] if mask.shape[0] == query.shape[0] else mask)[..., image, :]
            steered = sdpa(query[cond][:, :, image], key[cond], self.aligned_values(value, rows, text), cond_mask)
            out = out.clone()
            out[cond, :, image] = steered.to(out.dtype)
            return out

        return run
