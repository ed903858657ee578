"""Structured guidance on joint attention against the definition computed literally (docs/structured.md)."""

from __future__ import annotations

import pytest
import torch

from attnctl.core import AttentionCall, LayerInfo, RunState
from attnctl.structured.joint import JointPhrase, JointStructuredControl, phrase_rows_layout

IMAGE, TEXT, HEADS, DIM = 6, 5, 2, 4
JOINT = LayerInfo("transformer_blocks.0.attn.processor", True, "block", 0, 0, joint=True)


def _call(batch: int, rows, text_first: bool, branch=None) -> AttentionCall:
    text = slice(0, TEXT) if text_first else slice(IMAGE, IMAGE + TEXT)
    image = slice(TEXT, TEXT + IMAGE) if text_first else slice(0, IMAGE)
    return AttentionCall(JOINT, None, RunState(row_layout=rows, branch=branch), batch, IMAGE + TEXT, (2, 3),
                         image_queries=image, text_keys=text)


def _literal(query, key, value, row, phrase_rows, moves, text, image):
    """Mean over the value sets {V} and {align(V, V_i)} of softmax(QK^T/sqrt(d)) V, for the image queries."""
    probs = torch.softmax(query[row] @ key[row].transpose(-1, -2) / DIM**0.5, dim=-1)[:, image]
    sets = [value[row]]
    for phrase_row, phrase_moves in zip(phrase_rows, moves):
        aligned = value[row].clone()
        for destination, source, length in phrase_moves:
            aligned[:, text.start + destination : text.start + destination + length] = (
                value[phrase_row][:, text.start + source : text.start + source + length])
        sets.append(aligned)
    return torch.stack([probs @ v for v in sets]).mean(0)


@pytest.mark.parametrize("text_first", [False, True])  # SD3: [image, text]; Flux: [text, image]
def test_image_queries_read_the_mean_of_the_aligned_values_and_everything_else_is_stock(text_first):
    torch.manual_seed(0)
    moves = [((1, 1, 2), (3, 0, 1)), ((0, 0, 1),)]  # phrase 0 has two moves (SD3's CLIP and T5 rows)
    control = JointStructuredControl([[JointPhrase(0, moves[0]), JointPhrase(1, moves[1])]])
    rows = phrase_rows_layout(1, 2)
    query, key, value = (torch.randn(4, HEADS, IMAGE + TEXT, DIM) for _ in range(3))  # [uncond, cond, p0, p1]
    call = _call(4, rows, text_first)
    assert control.applies_to(call)
    out = control.kernel(call)(query, key, value, None)
    stock = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    image, text = call.image_queries, call.text_keys
    expected = _literal(query, key, value, 1, [2, 3], moves, text, image)
    torch.testing.assert_close(out[1][:, image], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[1][:, image], stock[1][:, image])
    assert torch.equal(out[1][:, text], stock[1][:, text])  # text queries read the stock values
    for row in (0, 2, 3):  # unconditional and phrase rows
        assert torch.equal(out[row], stock[row])


def test_rows_layout_and_when_the_control_stays_out():
    rows = phrase_rows_layout(2, 3)
    assert rows(7)["phrases"] == slice(4, 7) and rows(7)["cond"] == slice(2, 4)
    assert rows(5)["cond"] == slice(0, 2) and "uncond" not in rows(5)
    with pytest.raises(ValueError, match="got a batch of 6"):
        rows(6)
    control = JointStructuredControl([[JointPhrase(0, ((0, 0, 1),))]])
    assert phrase_rows_layout(1, 1)(2, "uncond").names == ("uncond", "phrases")  # Flux true CFG's second pass
    assert not control.applies_to(_call(2, phrase_rows_layout(1, 1), True, branch="uncond"))
    assert not JointStructuredControl([[]]).applies_to(_call(2, phrase_rows_layout(1, 0), True))
