"""Attention probes: maps, entropy, sink share and their plots."""

from __future__ import annotations

import math

import pytest
import torch

from attnctl.llm.probes import AttentionProbe, probe_attention
from attnctl.llm.tiny import build_char_tokenizer, build_tiny_causal_lm


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.mark.parametrize(("family", "implementation"), [("llama", "sdpa"), ("qwen2_moe", "eager")])
def test_maps_are_causal_distributions_and_the_model_is_untouched(tokenizer, family, implementation):
    model = build_tiny_causal_lm(family, attn_implementation=implementation)
    ids = tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        stock = model(ids).logits
    probe = probe_attention(model, ["hello world", "abc"], tokenizer)
    first = probe.maps[0]
    assert first.shape == (2, 4, 11, 11) and probe.maps[1].shape == (2, 4, 3, 3)
    torch.testing.assert_close(first.sum(-1), torch.ones(2, 4, 11))
    assert torch.equal(first.triu(1), torch.zeros_like(first))
    assert probe.tokens[1] == ["a", "b", "c"] and probe.layers == [0, 1]
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        assert torch.equal(model(ids).logits, stock)


def test_probe_equals_eager_attention_weights(tokenizer):
    model = build_tiny_causal_lm("llama", attn_implementation="eager")
    ids = tokenizer("probing", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        weights = model(ids, output_attentions=True).attentions
    probe = probe_attention(model, [ids[0]])
    for layer, expected in enumerate(weights):
        torch.testing.assert_close(probe.maps[0][layer], expected[0], rtol=0, atol=1e-6)


def test_statistics_on_known_maps():
    uniform = torch.ones(3, 3).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)  # row r spreads over r + 1 keys
    sink = torch.zeros(3, 3)
    sink[:, 0] = 1.0  # every query attends to the first token only
    probe = AttentionProbe([torch.stack([uniform, sink])[None]], layers=[0], tokens=[["a", "b", "c"]])
    torch.testing.assert_close(probe.entropy(), torch.tensor([[(math.log(2) + math.log(3)) / 2, 0.0]]))
    torch.testing.assert_close(probe.sink_share(), torch.tensor([[(1 / 2 + 1 / 3) / 2, 1.0]]))
    assert torch.equal(probe.head_map(0, 0, 1), sink)


def test_only_selected_layers_are_recorded(tokenizer):
    model = build_tiny_causal_lm("llama", num_layers=3)
    probe = probe_attention(model, ["abcdef"], tokenizer, layers=[2])
    assert probe.layers == [2] and probe.maps[0].shape[0] == 1


def test_bad_input_raises(tokenizer):
    model = build_tiny_causal_lm("llama")
    with pytest.raises(ValueError, match="texts is empty"):
        probe_attention(model, [])
    with pytest.raises(ValueError, match="tokenizer is None"):
        probe_attention(model, ["text"])
    probe = probe_attention(model, ["a"], tokenizer)
    with pytest.raises(ValueError, match="two tokens"):
        probe.entropy()


def test_plots_have_one_panel_per_layer_and_head(tokenizer):
    pytest.importorskip("matplotlib")
    from attnctl.llm.plots import plot_attention_maps, plot_head_statistics

    model = build_tiny_causal_lm("llama")
    probe = probe_attention(model, ["sink test"], tokenizer)
    maps = plot_attention_maps(probe, text=0, heads=[0, 3])
    assert len(maps.axes) == 2 * 2
    assert maps.axes[1].get_title() == "layer 0 head 3"
    stats = plot_head_statistics(probe)
    assert [ax.get_title() for ax in stats.axes[:2]] == ["entropy (nats)", "sink share"]
    with pytest.raises(ValueError, match="text=3"):
        plot_attention_maps(probe, text=3)
