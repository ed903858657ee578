"""ControlledAttnProcessor with no acting control equals diffusers' AttnProcessor2_0 bit for bit."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attnctl.core import AttentionControl, AttentionController, ControlledAttnProcessor, LayerInfo


def _controlled(controls=()):
    controller = AttentionController(controls)
    return ControlledAttnProcessor(controller, LayerInfo.from_name("attn.processor", False, 0)), controller


# Each case: Attention kwargs, whether the input is a 4-D feature map, cross-attention, a mask, temb.
CASES = {
    "self": (dict(query_dim=16, heads=2, dim_head=8), False, False, False),
    "cross": (dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8), False, True, False),
    "group_norm_residual_rescale_4d": (
        dict(query_dim=16, heads=4, dim_head=4, norm_num_groups=4, residual_connection=True,
             rescale_output_factor=2.0, bias=True),
        True, False, False,
    ),
    "spatial_norm": (dict(query_dim=32, heads=2, dim_head=8, spatial_norm_dim=4), True, False, False),
    "cross_norm_layer": (
        dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, cross_attention_norm="layer_norm"),
        False, True, False,
    ),
    "cross_norm_group": (
        dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, cross_attention_norm="group_norm",
             cross_attention_norm_num_groups=4),
        False, True, False,
    ),
    "qk_norm": (dict(query_dim=16, heads=2, dim_head=8, qk_norm="layer_norm"), False, False, False),
    "mask": (dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8), False, True, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_controls_equals_stock_exactly(case):
    kwargs, four_d, cross, masked = CASES[case]
    torch.manual_seed(0)
    attn = Attention(**kwargs).eval()
    channels = kwargs["query_dim"]
    hidden = torch.randn(2, channels, 4, 4) if four_d else torch.randn(2, 10, channels)
    context = torch.randn(2, 7, 12) if cross else None
    mask = None
    if masked:
        mask = torch.zeros(2, 7)
        mask[:, 5:] = -10000.0  # diffusers' additive (batch, key_tokens) mask
    temb = torch.randn(2, 4, 4, 4) if kwargs.get("spatial_norm_dim") else None
    stock = AttnProcessor2_0()(attn, hidden, context, mask, temb)
    processor, _ = _controlled()
    ours = processor(attn, hidden, context, mask, temb)
    assert torch.equal(stock, ours)


class _ReadProbs(AttentionControl):
    """Asks for probabilities and leaves them alone: forces the materialised path."""

    def __init__(self):
        self.seen = 0

    def needs_probs(self, call):
        return True

    def observe(self, call, probs):
        self.seen += 1


@pytest.mark.parametrize("case", ["self", "cross", "mask", "group_norm_residual_rescale_4d"])
def test_materialised_path_matches_stock_to_float_tolerance(case):
    kwargs, four_d, cross, masked = CASES[case]
    torch.manual_seed(1)
    attn = Attention(**kwargs).eval()
    hidden = torch.randn(2, 16, 4, 4) if four_d else torch.randn(2, 10, 16)
    context = torch.randn(2, 7, 12) if cross else None
    mask = torch.zeros(2, 7).index_fill_(1, torch.tensor([6]), -10000.0) if masked else None
    stock = AttnProcessor2_0()(attn, hidden, context, mask)
    reader = _ReadProbs()
    processor, _ = _controlled([reader])
    ours = processor(attn, hidden, context, mask)
    assert reader.seen == 1
    # explicit softmax vs the fused kernel: same maths, different summation order (float32)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)


def test_no_unexpected_kwarg_warnings(caplog):
    """The processor declares the stock arguments, so diffusers has nothing to drop and nothing to log."""
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    processor, _ = _controlled()
    attn.set_processor(processor)
    with caplog.at_level("WARNING"):
        attn(torch.randn(1, 4, 16))
    assert not [r for r in caplog.records if "are not expected" in r.getMessage()]
