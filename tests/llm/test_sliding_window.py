"""The blocked causal sliding-window kernel and its reversible install on transformers models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnctl.llm.patching import route_attention
from attnctl.llm.sliding_window import (
    apply_sliding_window,
    sliding_window_attention,
)
from attnctl.llm.tiny import build_tiny_causal_lm


def qkv(q_len, kv_len, heads=4, kv_heads=2, dim=8, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, heads, q_len, dim, generator=generator, dtype=dtype),
        torch.randn(2, kv_heads, kv_len, dim, generator=generator, dtype=dtype),
        torch.randn(2, kv_heads, kv_len, dim, generator=generator, dtype=dtype),
    )


@pytest.mark.parametrize(
    ("q_len", "kv_len", "window", "sinks", "block"),
    [
        (37, 37, 5, 0, 8),
        (37, 37, 5, 3, 8),
        (64, 64, 16, 4, 16),
        (33, 33, 1, 0, 8),
        (33, 33, 3, 40, 5),
        (1, 40, 6, 3, 64),
        (10, 50, 7, 4, 4),
        (20, 20, 100, 2, 7),
    ],
)
def test_kernel_equals_the_dense_masked_reference(q_len, kv_len, window, sinks, block):
    query, key, value = qkv(q_len, kv_len)
    fast = sliding_window_attention(query, key, value, window, sinks, block=block)
    slow = sliding_window_attention(query, key, value, window, sinks, reference=True)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_window_covering_the_sequence_is_full_causal_attention():
    query, key, value = qkv(50, 50, kv_heads=4, dtype=torch.float32)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    torch.testing.assert_close(
        sliding_window_attention(query, key, value, 50, block=16), expected, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("boolean", [True, False])
def test_padding_masks_combine_with_the_window(boolean):
    query, key, value = qkv(20, 20)
    keep = torch.ones(2, 1, 20, 20, dtype=torch.bool).tril()
    keep[0, :, :, :3] = False  # three left-padding tokens in the first sequence
    mask = keep if boolean else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -1e300)
    fast = sliding_window_attention(query, key, value, 4, 1, attention_mask=mask, block=8)
    slow = sliding_window_attention(query, key, value, 4, 1, attention_mask=mask, reference=True)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_output_keeps_dtype_and_shape():
    query, key, value = qkv(12, 12, dtype=torch.bfloat16)
    out = sliding_window_attention(query, key, value, 4, 1, block=5)
    assert out.dtype == torch.bfloat16 and out.shape == query.shape


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": 3, "sinks": -1}, {"window": 3, "block": 0}])
def test_bad_arguments_raise(kwargs):
    query, key, value = qkv(8, 8)
    with pytest.raises(ValueError, match="window|sinks|block"):
        sliding_window_attention(query, key, value, **kwargs)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_covering_window_is_bit_exact_with_the_stock_model(implementation):
    model = build_tiny_causal_lm("qwen2", attn_implementation=implementation)
    ids = torch.randint(4, 99, (2, 24), generator=torch.Generator().manual_seed(1))
    padding = torch.ones(2, 24, dtype=torch.long)
    padding[0, :4] = 0
    with torch.no_grad():
        stock, stock_padded = model(ids).logits, model(ids, attention_mask=padding).logits
        with apply_sliding_window(model, 24, sinks=2):
            assert torch.equal(model(ids).logits, stock)
            assert torch.equal(model(ids, attention_mask=padding).logits, stock_padded)
    assert model.config._attn_implementation == implementation


def test_model_with_window_matches_the_reference_route():
    model = build_tiny_causal_lm("llama", num_kv_heads=2)
    ids = torch.randint(4, 99, (2, 40), generator=torch.Generator().manual_seed(2))

    def reference(stock):
        def attend(module, query, key, value, attention_mask, scaling=None, **kwargs):
            out = sliding_window_attention(query, key, value, 8, 2, attention_mask, scaling, reference=True)
            return out.transpose(1, 2).contiguous(), None

        return attend

    with torch.no_grad():
        with route_attention(model, {0: reference, 1: reference}):
            expected = model(ids).logits
        with apply_sliding_window(model, 8, sinks=2, block=16):
            windowed = model(ids).logits
        stock = model(ids).logits
    torch.testing.assert_close(windowed, expected, rtol=0, atol=1e-5)
    assert (windowed - stock).abs().max() > 1e-2  # the window does change a 40-token input


def test_cached_generation_equals_the_full_forward():
    """``generate`` with a KV cache (a 20-token prefill, then 10 one-token steps) gives the logits a full windowed
    forward gives over the generated text; ``generate`` passes the cache the way the installed transformers wants."""
    model = build_tiny_causal_lm("mixtral")
    ids = torch.randint(4, 99, (2, 20), generator=torch.Generator().manual_seed(3))
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    with torch.no_grad(), apply_sliding_window(model, 6, sinks=1, block=8):
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10, do_sample=False,
            use_cache=True, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
        )
        hook.remove()
        full = model(out.sequences).logits
    assert lengths == [20] + [1] * 9  # really incremental: one prefill, then one token at a time
    torch.testing.assert_close(torch.stack(out.logits, dim=1), full[:, 19:29], rtol=0, atol=1e-5)


def test_only_the_chosen_layers_change_and_restore_puts_everything_back():
    model = build_tiny_causal_lm("llama", num_layers=3)
    ids = torch.randint(4, 99, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        stock = model(ids).logits
        patch = apply_sliding_window(model, 4, layers=[2])
        last_only = model(ids).logits
        patch.restore()
        patch.restore()  # idempotent
        assert torch.equal(model(ids).logits, stock)
    assert not torch.equal(last_only, stock)
    assert model.config._attn_implementation == "sdpa"


def _cached_and_full_logits(model, window, sinks, prompt=12, new=14):
    """Greedy ``generate`` with a KV cache under the patch, and the full patched forward over its output."""
    ids = torch.randint(4, 99, (2, prompt), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), apply_sliding_window(model, window, sinks=sinks, block=8):
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
            use_cache=True, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
        )
        full = model(out.sequences).logits
    return torch.stack(out.logits, dim=1), full[:, prompt - 1 : prompt - 1 + new]


@pytest.mark.parametrize("window", [4, 12])
def test_native_sliding_window_model_decodes_exactly_without_sinks(window):
    """Mistral's rolling cache (native window 8) keeps the last 7 tokens: 26 tokens overflow it."""
    model = build_tiny_causal_lm("mistral", sliding_window=8)
    cached, full = _cached_and_full_logits(model, window, sinks=0)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_sinks_on_a_native_sliding_window_are_refused_and_the_documented_fix_is_exact():
    model = build_tiny_causal_lm("mistral", sliding_window=8)
    with pytest.raises(ValueError, match=r"sinks=2 on layers \[0, 1\].*sliding_window=8"):
        apply_sliding_window(model, 4, sinks=2)
    assert model.config._attn_implementation == "sdpa"  # nothing was installed
    with pytest.raises(ValueError, match=r"sinks=2 on layers \[1\]"):
        apply_sliding_window(model, 4, sinks=2, layers=[1])
    model.config.sliding_window = None  # the cache keeps every token: the sinks stay in it
    cached, full = _cached_and_full_logits(model, 4, sinks=2)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    ids = torch.randint(4, 99, (1, 26), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # the sinks are really attended: they change the output
        with apply_sliding_window(model, 4, sinks=2):
            with_sinks = model(ids).logits
        with apply_sliding_window(model, 4):
            assert (model(ids).logits - with_sinks).abs().max() > 1e-3
