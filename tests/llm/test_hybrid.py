"""Lizard-style hybrid attention: the linear branch's three forms and the recurrent layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnctl.llm.hybrid import (
    LizardAttention,
    apply_hybrid_attention,
    gated_linear_attention_chunked,
    gated_linear_attention_reference,
)
from attnctl.llm.tiny import build_tiny_causal_lm


def linear_inputs(tokens=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, tokens)
    return (
        torch.rand(*shape, 8, generator=generator, dtype=torch.float64),
        torch.rand(*shape, 8, generator=generator, dtype=torch.float64),
        torch.randn(*shape, 4, generator=generator, dtype=torch.float64),
        F.logsigmoid(3 * torch.randn(*shape, generator=generator, dtype=torch.float64)),
    )


@pytest.mark.parametrize("chunk", [1, 7, 16, 50, 64])
def test_chunked_form_equals_the_quadratic_reference(chunk):
    inputs = linear_inputs()
    torch.testing.assert_close(
        gated_linear_attention_chunked(*inputs, chunk=chunk),
        gated_linear_attention_reference(*inputs),
        rtol=0,
        atol=1e-12,
    )


def test_strong_decay_stays_finite_over_long_sequences():
    q, k, v, _ = linear_inputs(tokens=2000)
    out = gated_linear_attention_chunked(
        q, k, v, torch.full(q.shape[:-1], -5.0, dtype=torch.float64), chunk=64
    )
    assert torch.isfinite(out).all()


def rope(tokens, dim, dtype=torch.float64):
    angles = torch.arange(tokens, dtype=dtype)[:, None] / 10 ** (torch.arange(dim // 2, dtype=dtype) / dim)
    angles = torch.cat([angles, angles], dim=-1)[None]
    return angles.cos(), angles.sin()


@pytest.mark.parametrize(("window", "sinks", "kv_heads"), [(6, 2, 2), (1, 0, 4), (3, 5, 1), (64, 2, 2)])
def test_recurrent_form_equals_the_parallel_form(window, sinks, kv_heads):
    torch.manual_seed(0)
    layer = LizardAttention(32, 4, kv_heads, window=window, sinks=sinks, chunk=8, linear_init=0.7).double()
    with torch.no_grad():
        layer.gate_proj.weight.normal_(std=0.5)  # data-dependent decay, not just the bias
    hidden = torch.randn(2, 30, 32, dtype=torch.float64)
    cos, sin = rope(30, 8)
    with torch.no_grad():
        parallel, _ = layer(hidden, (cos.expand(2, -1, -1), sin.expand(2, -1, -1)))
    state = layer.init_state(2)
    steps = []
    for t in range(30):
        out, state = layer.step(
            hidden[:, t], state, (cos[:, t : t + 1].expand(2, -1, -1), sin[:, t : t + 1].expand(2, -1, -1))
        )
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), parallel, rtol=0, atol=1e-12)
    assert state.window_keys.shape[2] == min(window, 30) and state.sink_keys.shape[2] == min(sinks, 30)
    assert state.linear.shape == (2, 4, 16, 8)  # constant: independent of the 30 tokens consumed


def test_hybrid_patch_replaces_and_restores_attention():
    model = build_tiny_causal_lm("llama")
    ids = torch.randint(4, 99, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = model(ids).logits
        with apply_hybrid_attention(model, window=8, sinks=2) as patch:
            attention = model.model.layers[0].self_attn
            assert isinstance(attention, LizardAttention)
            assert attention.q_proj is patch.layers[0].q_proj
            hybrid = model(ids).logits
            assert hybrid.shape == stock.shape and torch.isfinite(hybrid).all()
            assert sum(p.numel() for p in patch.new_parameters()) == 2 * (4 * 8 * 8 + 32 * 4 + 4 + 4)
        assert type(model.model.layers[0].self_attn).__name__ == "LlamaAttention"
        assert torch.equal(model(ids).logits, stock)


def test_padded_batches_are_refused():
    model = build_tiny_causal_lm("llama")
    ids = torch.randint(4, 99, (2, 12))
    padding = torch.ones(2, 12, dtype=torch.long)
    padding[0, :3] = 0
    with apply_hybrid_attention(model, window=4), pytest.raises(ValueError, match="unpadded"):
        model(ids, attention_mask=padding)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="window"):
        LizardAttention(32, 4, window=0)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        LizardAttention(32, 4, 3)
    q, k, v, g = linear_inputs(tokens=4)
    with pytest.raises(ValueError, match="chunk=0"):
        gated_linear_attention_chunked(q, k, v, g, chunk=0)


@pytest.mark.parametrize(("family", "implementation"), [("llama", "sdpa"), ("qwen2", "eager"), ("mixtral", "sdpa")])
def test_swap_is_the_original_model_while_the_window_covers_the_input(family, implementation):
    """``linear_scale`` starts at 0 and a covering window runs the stock attention: logits equal bit for bit."""
    model = build_tiny_causal_lm(family, attn_implementation=implementation)
    ids = torch.randint(4, 99, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stock = model(ids).logits
        with apply_hybrid_attention(model, window=24, sinks=2) as patch:
            assert torch.equal(model(ids).logits, stock)
            for layer in patch.layers:
                layer.linear_scale.fill_(1.0)  # once trained, the linear branch adds global context
            assert (model(ids).logits - stock).abs().max() > 1e-3


def test_swap_beyond_the_window_is_sliding_window_attention_until_trained():
    from attnctl.llm.sliding_window import apply_sliding_window

    model = build_tiny_causal_lm("llama")
    ids = torch.randint(4, 99, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with apply_sliding_window(model, 8, sinks=2):
            windowed = model(ids).logits
        with apply_hybrid_attention(model, window=8, sinks=2):
            torch.testing.assert_close(model(ids).logits, windowed, rtol=0, atol=1e-6)


def test_hybrid_refuses_a_model_under_another_patch():
    from attnctl.llm.sliding_window import apply_sliding_window

    model = build_tiny_causal_lm("llama")
    with apply_sliding_window(model, 8), pytest.raises(ValueError, match="attn_implementation='attnctl'"):
        apply_hybrid_attention(model, window=8)
