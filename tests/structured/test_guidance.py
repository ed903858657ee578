"""Structured cross-attention against literal, naive computations (Feng et al. 2023, Sec. 3.2)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attnctl.core import AttentionController, ControlledAttnProcessor, LayerInfo, guidance_rows
from attnctl.structured import PhraseEncoding, StructuredControl, align, align_all

TOKENS, DIM = 9, 12


def _naive_cross(attn: Attention, hidden, key_context, value_context):
    """to_out(softmax(Q K^T / sqrt(d)) V) with keys and values from different contexts, per head, by hand."""
    heads = attn.heads
    q, k, v = attn.to_q(hidden), attn.to_k(key_context), attn.to_v(value_context)
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
    return attn.to_out[0](out)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=DIM, heads=2, dim_head=8).eval()
    hidden = torch.randn(4, 6, 16)  # rows: [uncond x2, cond x2]
    states = torch.randn(4, TOKENS, DIM)
    phrases = [
        [PhraseEncoding(torch.randn(TOKENS, DIM), 0, 2), PhraseEncoding(torch.randn(TOKENS, DIM), 3, 6)],
        [PhraseEncoding(torch.randn(TOKENS, DIM), 1, 4)],
    ]
    return attn, hidden, states, phrases


def _run(attn, hidden, states, control):
    controller = AttentionController([control], rows=guidance_rows(2))  # two prompts: [uncond x2, cond x2]
    processor = ControlledAttnProcessor(controller, LayerInfo.from_name("x.attn2.processor", True, 0))
    return processor(attn, hidden, states)


def test_align_replaces_only_the_phrase_positions():
    full, phrase = torch.zeros(TOKENS, 2), PhraseEncoding(torch.arange(TOKENS * 2.0).view(TOKENS, 2), 2, 4)
    out = align(full, phrase)
    assert torch.equal(out[3:5], phrase.embedding[1:3])  # positions 1+start .. 1+end-1 <- 1 .. end-start
    assert torch.count_nonzero(out[:3]) == 0 and torch.count_nonzero(out[5:]) == 0
    later = PhraseEncoding(torch.full((TOKENS, 2), -1.0), 3, 5)
    assert torch.equal(align_all(full, [phrase, later])[4:6], torch.full((2, 2), -1.0))


def test_values_mode_equals_the_literal_mean_over_value_sets(setup):
    attn, hidden, states, phrases = setup
    ours = _run(attn, hidden, states, StructuredControl(phrases, "values"))
    for row, row_phrases in enumerate(phrases):
        c0 = states[2 + row]
        value_sets = [c0] + [align(c0, p) for p in row_phrases]
        outs = [_naive_cross(attn, hidden[2 + row : 3 + row], c0[None], v[None]) for v in value_sets]
        torch.testing.assert_close(ours[2 + row], torch.stack(outs).mean(0)[0], rtol=1e-5, atol=1e-6)


def test_keys_mode_equals_the_mean_over_key_sets_of_naive_attention(setup):
    attn, hidden, states, phrases = setup
    ours = _run(attn, hidden, states, StructuredControl(phrases, "keys"))
    for row, row_phrases in enumerate(phrases):
        c0 = states[2 + row]
        single = align_all(c0, row_phrases)
        key_sets = [c0] + [align(c0, p) for p in row_phrases]
        outs = [_naive_cross(attn, hidden[2 + row : 3 + row], k[None], single[None]) for k in key_sets]
        torch.testing.assert_close(ours[2 + row], torch.stack(outs).mean(0)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_only_the_conditional_half_changes(setup, mode):
    attn, hidden, states, phrases = setup
    stock = AttnProcessor2_0()(attn, hidden, states)
    ours = _run(attn, hidden, states, StructuredControl(phrases, mode))
    assert torch.equal(ours[:2], stock[:2])
    assert not torch.allclose(ours[2:], stock[2:])


def test_without_guidance_batch_every_row_is_conditional(setup):
    attn, hidden, states, phrases = setup
    ours = _run(attn, hidden[2:], states[2:], StructuredControl(phrases, "values"))
    full = _run(attn, hidden, states, StructuredControl(phrases, "values"))
    torch.testing.assert_close(ours, full[2:], rtol=1e-5, atol=1e-6)


def test_no_phrases_is_stock_and_bad_inputs_are_rejected(setup):
    attn, hidden, states, _ = setup
    assert torch.equal(_run(attn, hidden, states, StructuredControl([[], []])), AttnProcessor2_0()(attn, hidden, states))
    with pytest.raises(ValueError, match="struct_mode='both'"):
        StructuredControl([[]], "both")
    with pytest.raises(ValueError, match="prepared for 3 conditional rows"):
        _run(attn, hidden, states, StructuredControl([[PhraseEncoding(states[0], 0, 1)]] * 3))


def test_aligned_sets_are_rebuilt_when_the_encoder_states_change(setup):
    attn, hidden, states, phrases = setup
    control = StructuredControl(phrases, "values")
    _run(attn, hidden, states, control)
    states.mul_(2.0)  # in place, as a callback editing prompt_embeds might
    changed = _run(attn, hidden, states, control)
    assert torch.equal(changed, _run(attn, hidden, states, StructuredControl(phrases, "values")))
    replaced = states.clone() + 1.0
    assert torch.equal(_run(attn, hidden, replaced, control), _run(attn, hidden, replaced,
                                                                   StructuredControl(phrases, "values")))


def test_the_control_runs_under_inference_mode():
    from attnctl.core import AttentionCall, LayerInfo, RunState, guidance_rows

    control = StructuredControl([[PhraseEncoding(torch.randn(6, 4), 0, 2)]])
    call = AttentionCall(LayerInfo("x.attn2.processor", True, "down", 0, 0), None, RunState(row_layout=guidance_rows(1)),
                         2, 4, (2, 2))
    with torch.inference_mode():
        states = torch.randn(2, 6, 4)  # an inference tensor: no version counter
        assert control.context(call, states) is control.context(call, states)  # built once, then cached
