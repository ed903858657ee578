"""Joint attention: the image-query x text-key block is cross-attention; controls bias and read it there."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

from attnctl.core import (
    AttentionCall,
    AttentionControl,
    AttentionController,
    ControlledJointAttnProcessor,
    LayerInfo,
    RunState,
)
from attnctl.core.joint import ControlledFluxAttnProcessor
from attnctl.models.tiny_families import build_tiny_flux_components

IMAGE, TEXT = 6, 4


def joint_attention() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, added_kv_proj_dim=16, dim_head=8, heads=2, out_dim=16, context_pre_only=False,
                     processor=JointAttnProcessor2_0()).eval()  # fmt: skip


class BlockText(AttentionControl):
    """Image queries may not read any text key: a boolean keep-mask on the cross block only."""

    def logits_bias(self, call, query_len, key_len):
        return call.joint_bias(torch.zeros(IMAGE, TEXT, dtype=torch.bool), query_len, key_len)


def _processor(controls=()):
    layer = LayerInfo.from_name("transformer_blocks.0.attn.processor", True, 0, joint=True)
    return ControlledJointAttnProcessor(AttentionController(controls), layer)


def test_a_cross_block_bias_changes_what_image_queries_read_and_nothing_else():
    attn = joint_attention()
    image, text = torch.randn(2, IMAGE, 16), torch.randn(2, TEXT, 16)
    stock_image, stock_text = JointAttnProcessor2_0()(attn, image, text)
    ours_image, ours_text = _processor([BlockText()])(attn, image, text)
    # reference: image queries attend to image keys only (Eq. 1 of Vaswani et al. 2017 on the image tokens)
    q, k, v = (p(image).view(2, IMAGE, 2, 8).transpose(1, 2) for p in (attn.to_q, attn.to_k, attn.to_v))
    expected = ((q @ k.transpose(-1, -2)) / 8**0.5).softmax(-1) @ v
    expected = attn.to_out[0](expected.transpose(1, 2).reshape(2, IMAGE, 16))
    torch.testing.assert_close(ours_image, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_text, stock_text, rtol=1e-5, atol=1e-6)  # text queries untouched
    assert not torch.allclose(ours_image, stock_image)


def test_cross_block_is_the_image_query_text_key_part():
    seen = []

    class Read(AttentionControl):
        def needs_probs(self, call):
            return True

        def observe(self, call, probs):
            seen.append(call.cross(probs))

    attn = joint_attention()
    image, text = torch.randn(1, IMAGE, 16), torch.randn(1, TEXT, 16)
    _processor([Read()])(attn, image, text)
    assert seen[0].shape == (1, 2, IMAGE, TEXT)
    self_call = AttentionCall(LayerInfo.from_name("x.attn1.processor", False, 0), None, RunState(), 1, 4, None)
    with pytest.raises(ValueError, match="no text keys: it is self-attention"):
        self_call.cross(torch.zeros(1, 4, 4))


def test_flux_single_stream_needs_the_text_length_from_the_transformer():
    transformer = build_tiny_flux_components()["transformer"]
    attn = transformer.single_transformer_blocks[0].attn
    layer = LayerInfo.from_name("single_transformer_blocks.0.attn.processor", True, 0, joint=True)
    processor = ControlledFluxAttnProcessor(AttentionController(), layer)
    with pytest.raises(ValueError, match="text length of Flux's single-stream blocks comes from txt_ids"):
        processor(attn, torch.randn(1, 10, 32))


def test_cached_output_is_refused_on_two_stream_layers():
    class Cached(AttentionControl):
        def cached_output(self, call):
            return torch.zeros(1)

    with pytest.raises(ValueError, match="returns image and text streams; cached_output cannot replace it"):
        _processor([Cached()])(joint_attention(), torch.randn(1, IMAGE, 16), torch.randn(1, TEXT, 16))
