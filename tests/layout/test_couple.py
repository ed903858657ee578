"""Regional prompts: the mixing weights and a controlled cross-attention layer against literal computations."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from attnctl.core import AttentionController, ControlledAttnProcessor, LayerInfo
from attnctl.layout import RegionalPrompts, couple_weights, region_masks

BOXES = [(0.0, 0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 1.0)]


def test_couple_weights_match_the_literal_definition():
    masks = region_masks(BOXES, (2, 4))
    weights = couple_weights(masks, base_ratio=0.3, region_weights=[1.0, 2.0])
    for q in range(8):
        inside = [bool(masks[r, q]) for r in range(2)]
        raw = [0.3 if any(inside) else 1.0] + [0.7 * w * m for w, m in zip([1.0, 2.0], inside)]
        literal = torch.tensor(raw) / sum(raw)
        torch.testing.assert_close(weights[:, q], literal)
    assert torch.allclose(weights.sum(0), torch.ones(8))


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).eval()


def _control(layer: Attention, control: RegionalPrompts) -> None:
    """Give ``layer`` a controlled processor on a 2x4 token grid."""
    controller = AttentionController([control])
    controller.on_model_forward(torch.zeros(1, 4, 2, 4), 500)  # step 0 on a 2x4 latent
    info = LayerInfo.from_name("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", True, 0)
    layer.set_processor(ControlledAttnProcessor(controller, info))


def test_regional_prompts_layer_equals_the_literal_mixture_of_attentions(layer):
    torch.manual_seed(1)
    hidden = torch.randn(2, 8, 8)  # (batch, queries on a 2x4 grid, dim)
    base = torch.randn(2, 5, 6)  # (batch, tokens, dim): row 0 unconditional, row 1 conditional
    regions = torch.randn(2, 5, 6)  # (regions, tokens, dim)
    control = RegionalPrompts(BOXES, regions, base_ratio=0.25, region_weights=[1.0, 3.0],
                              rows=lambda call: slice(1, None))
    _control(layer, control)
    with torch.no_grad():
        out = layer(hidden, encoder_hidden_states=base)
        weights = couple_weights(region_masks(BOXES, (2, 4)), 0.25, [1.0, 3.0])  # (3, q)

        def attention(x, context):  # the stock layer's attention for one row, written out
            q = layer.to_q(x).view(-1, 2, 4).transpose(0, 1)
            k = layer.to_k(context).view(-1, 2, 4).transpose(0, 1)
            v = layer.to_v(context).view(-1, 2, 4).transpose(0, 1)
            heads = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v  # (heads, q, head_dim)
            return heads.transpose(0, 1).reshape(-1, 8)

        uncond = layer.to_out[0](attention(hidden[0], base[0]))
        contexts = [base[1], regions[0], regions[1]]
        mixed = sum(weights[r][:, None] * attention(hidden[1], contexts[r]) for r in range(3))
        cond = layer.to_out[0](mixed)
    torch.testing.assert_close(out[0], uncond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], cond, rtol=1e-5, atol=1e-6)


def test_mismatched_encodings_raise(layer):
    with pytest.raises(ValueError, match="encodings must be"):
        RegionalPrompts(BOXES, torch.randn(3, 5, 6), 0.2, [1.0, 1.0])
    control = RegionalPrompts(BOXES, torch.randn(2, 4, 6), 0.2, [1.0, 1.0])
    _control(layer, control)
    with pytest.raises(ValueError, match="same text encoder"):
        layer(torch.randn(1, 8, 8), encoder_hidden_states=torch.randn(1, 5, 6))
