"""Gated attention: the gate module, identity initialisation on pretrained models, training and restore."""

from __future__ import annotations

import pytest
import torch

from attnctl.llm.gating import AttentionOutputGate, GatedOutputProjection, add_output_gates
from attnctl.llm.tiny import build_tiny_causal_lm
from attnctl.llm.training import next_token_targets, token_loss

IDS = torch.randint(4, 99, (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mixtral"])
@pytest.mark.parametrize("variant", ["headwise", "elementwise"])
def test_open_gate_is_bit_exact_plain_attention(family, variant):
    model = build_tiny_causal_lm(family)
    with torch.no_grad():
        stock = model(IDS).logits
        with add_output_gates(model, variant):
            assert isinstance(model.model.layers[0].self_attn.o_proj, GatedOutputProjection)
            assert torch.equal(model(IDS).logits, stock)
        assert type(model.model.layers[0].self_attn.o_proj) is torch.nn.Linear
        assert torch.equal(model(IDS).logits, stock)


@pytest.mark.parametrize("variant", ["headwise", "elementwise"])
def test_bias_free_gate_is_the_papers_form_and_starts_open(variant):
    model = build_tiny_causal_lm("llama")
    with torch.no_grad():
        stock = model(IDS).logits
        with add_output_gates(model, variant, bias=False) as patch:
            assert all(gate.proj.bias is None for gate in patch.gates)
            assert torch.equal(model(IDS).logits, stock)
    gate = AttentionOutputGate(32, 4, 8, variant, bias=False)
    hidden = torch.randn(2, 3, 32)
    expected = torch.sigmoid(hidden @ gate.proj.weight.T)  # sigmoid(X W_g), no b_g
    torch.testing.assert_close(gate(hidden), expected.view(2, 3, 4, -1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_bias=1.0"):
        AttentionOutputGate(32, 4, 8, variant, identity_init=True, init_bias=1.0, bias=False)


def test_random_init_keeps_the_linear_layers_default_weights_and_bias():
    torch.manual_seed(7)
    gate = AttentionOutputGate(32, 4, 8, "headwise", identity_init=False)
    torch.manual_seed(7)
    default = torch.nn.Linear(32, 4)
    assert torch.equal(gate.proj.weight, default.weight) and torch.equal(gate.proj.bias, default.bias)
    assert gate.reference.item() == 1.0  # scores are not rescaled: sigmoid(X W_g + b_g) in (0, 1)


def test_other_initial_biases_start_within_one_rounding():
    model = build_tiny_causal_lm("llama")
    with torch.no_grad():
        stock = model(IDS).logits
        with add_output_gates(model, "headwise", init_bias=3.0):
            torch.testing.assert_close(model(IDS).logits, stock, rtol=1e-6, atol=1e-6)


def test_closed_gates_silence_attention():
    model = build_tiny_causal_lm("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
        silenced = model(IDS).logits
    model = build_tiny_causal_lm("llama")
    with torch.no_grad(), add_output_gates(model, "elementwise") as patch:
        for gate in patch.gates:
            gate.proj.bias.fill_(-1e4)  # sigmoid underflows to exactly 0
        torch.testing.assert_close(model(IDS).logits, silenced, rtol=0, atol=1e-6)


def test_gate_module_shapes_and_dtypes():
    hidden = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    for variant, width in (("headwise", 1), ("elementwise", 8)):
        gate = AttentionOutputGate(32, 4, 8, variant).to(torch.bfloat16)
        scores = gate(hidden)
        assert scores.shape == (3, 5, 4, width) and scores.dtype == torch.bfloat16
        assert bool(((scores > 0) & (scores < 1)).all())  # the paper's from-scratch gate lies in (0, 1)
        assert gate.apply_to(torch.randn(3, 5, 32, dtype=torch.bfloat16), hidden).shape == (3, 5, 32)


def test_only_gate_parameters_train_and_the_loss_decreases():
    model = build_tiny_causal_lm("llama")
    model.requires_grad_(False)
    targets = next_token_targets(IDS)
    with add_output_gates(model, "headwise") as patch:
        optimizer = torch.optim.Adam(list(patch.parameters()), lr=0.05)
        losses = []
        for _ in range(15):
            loss = token_loss(model(IDS).logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in patch.parameters())
    assert losses[-1] < losses[0] - 0.01
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_keeps_the_projection_keys():
    model = build_tiny_causal_lm("llama")
    with add_output_gates(model, "headwise", layers=[1]):
        keys = set(model.state_dict())
    assert "model.layers.1.self_attn.o_proj.weight" in keys
    assert "model.layers.1.self_attn.o_proj.gate.proj.weight" in keys
    assert not any(key.startswith("model.layers.0.self_attn.o_proj.gate") for key in keys)


def test_bad_variant_and_a_projection_called_alone_raise():
    with pytest.raises(ValueError, match="variant='rowwise'"):
        AttentionOutputGate(8, 2, 4, "rowwise")
    model = build_tiny_causal_lm("llama")
    with add_output_gates(model) as patch, pytest.raises(RuntimeError, match="outside its attention module"):
        model.model.layers[0].self_attn.o_proj(torch.randn(1, 2, 32))
    assert not patch.active
