"""Routing transformers attention through attnctl and putting it back."""

from __future__ import annotations

import pytest
import torch

from attnctl.llm.patching import attention_layers, route_attention, select_layers
from attnctl.llm.tiny import FAMILIES, build_tiny_causal_lm


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exposes_its_attention_layers(family):
    model = build_tiny_causal_lm(family, num_layers=3)
    layers = attention_layers(model)
    assert [layer.index for layer in layers] == [0, 1, 2]
    assert all(layer.name.endswith("self_attn") for layer in layers)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_unrouted_layers_run_the_stock_function_bit_exactly(implementation):
    model = build_tiny_causal_lm("llama", attn_implementation=implementation)
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model(ids).logits
        with route_attention(model, {}) as patch:
            assert model.config._attn_implementation == "attnctl"
            assert torch.equal(model(ids).logits, stock)
    assert not patch.active
    assert model.config._attn_implementation == implementation


def test_restore_happens_when_the_body_raises():
    model = build_tiny_causal_lm("llama")
    with pytest.raises(RuntimeError, match="boom"), route_attention(model, {}):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_a_second_route_on_the_same_model_is_refused():
    model = build_tiny_causal_lm("llama")
    with route_attention(model, {}), pytest.raises(ValueError, match="already carries"):
        route_attention(model, {})


def test_unsupported_implementations_and_models_are_refused():
    model = build_tiny_causal_lm("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="flex_attention"):
        route_attention(model, {})
    with pytest.raises(ValueError, match="PreTrainedModel"):
        route_attention(torch.nn.Linear(2, 2), {})


def test_unknown_layer_indices_are_refused():
    model = build_tiny_causal_lm("llama", num_layers=2)
    with pytest.raises(ValueError, match=r"\[5\]"):
        select_layers(model, [0, 5])
    with pytest.raises(ValueError, match="no attention module"):
        attention_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
