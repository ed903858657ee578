"""Attention rollout (Abnar & Zuidema 2020): closed forms, the layer product, head averaging, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.rollout import attention_rollout, cls_saliency


def _random_attention(batch=2, heads=3, tokens=5, seed=0):
    torch.manual_seed(seed)
    return torch.randn(batch, heads, tokens, tokens).softmax(-1)


def test_one_layer_is_half_head_mean_plus_half_identity():
    attention = _random_attention()
    expected = 0.5 * attention.mean(1) + 0.5 * torch.eye(5)
    torch.testing.assert_close(attention_rollout([attention]), expected)


def test_layers_multiply_last_on_the_left():
    first, second = _random_attention(seed=1), _random_attention(seed=2)
    mix = [0.5 * a.mean(1) + 0.5 * torch.eye(5) for a in (first, second)]
    torch.testing.assert_close(attention_rollout([first, second]), mix[1] @ mix[0])
    torch.testing.assert_close(
        attention_rollout([first, second], residual=False), second.mean(1) @ first.mean(1)
    )


def test_uniform_attention_has_a_closed_form():
    tokens, layers = 6, 4
    uniform = torch.full((1, 2, tokens, tokens), 1.0 / tokens)
    rollout = attention_rollout([uniform] * layers)
    # (0.5 U + 0.5 I)^L = 0.5^L I + (1 - 0.5^L) U, as U is idempotent
    expected = 0.5**layers * torch.eye(tokens) + (1 - 0.5**layers) * torch.full(
        (tokens, tokens), 1.0 / tokens
    )
    torch.testing.assert_close(rollout[0], expected)


def test_rows_stay_distributions_and_saliency_is_the_cls_row():
    rollout = attention_rollout([_random_attention(tokens=1 + 6, seed=s) for s in range(3)])
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 7))
    saliency = cls_saliency(rollout, (2, 3))
    assert saliency.shape == (2, 2, 3)
    assert torch.equal(saliency.flatten(1), rollout[:, 0, 1:])


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="attentions is empty"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"attentions\[1\] must be \(batch, heads, N, N\)"):
        attention_rollout([_random_attention(), _random_attention(tokens=4)])
    with pytest.raises(
        ValueError, match=r"rollout must be \(batch, 1 \+ H\*W, 1 \+ H\*W\) for grid=\(2, 2\)"
    ):
        cls_saliency(torch.eye(7)[None], (2, 2))
