"""CrossViT fusion: the CLS query equals the CLS row of full attention, fusion wiring, shapes, bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.crossvit import ClsCrossAttention, CrossViTFusion
from attnctl.vision.grid import naive_attention, split_heads


def test_cls_query_equals_the_cls_row_of_full_self_attention():
    torch.manual_seed(0)
    attention = ClsCrossAttention(dim=16, num_heads=4)
    x = torch.randn(2, 1 + 12, 16)
    query = split_heads(attention.q(x), 4)  # every token as a query, for the full reference
    key, value = (split_heads(t, 4) for t in attention.kv(x).chunk(2, dim=-1))
    full = naive_attention(query, key, value).transpose(1, 2).reshape(2, 13, 16)
    torch.testing.assert_close(attention(x), attention.proj(full[:, :1]), rtol=1e-5, atol=1e-6)


def test_fusion_changes_only_the_cls_tokens_and_reads_the_other_branch():
    torch.manual_seed(0)
    fusion = CrossViTFusion(dims=(16, 32), num_heads=(2, 4))
    small, large = torch.randn(2, 1 + 16, 16), torch.randn(2, 1 + 4, 32)
    new_small, new_large = fusion(small, large)
    assert new_small.shape == small.shape and new_large.shape == large.shape
    assert torch.equal(new_small[:, 1:], small[:, 1:]) and torch.equal(new_large[:, 1:], large[:, 1:])
    other = large.clone()
    other[:, 1:] = torch.randn(2, 4, 32)
    fused_small, fused_large = fusion(small, other)
    assert not torch.allclose(fused_small[:, 0], new_small[:, 0])  # the small CLS reads the large patches
    assert torch.equal(fused_large[:, 0], new_large[:, 0])  # the large CLS reads only the small patches


def test_fusion_matches_the_equations_for_one_branch():
    torch.manual_seed(0)
    fusion = CrossViTFusion(dims=(8, 12), num_heads=(2, 3))
    small, large = torch.randn(1, 5, 8), torch.randn(1, 3, 12)
    cls = fusion.to_other[0](small[:, :1])  # eq. 5: f^s
    joint = torch.cat([cls, large[:, 1:]], dim=1)
    cls = cls + fusion.attentions[0](fusion.norms[0](joint))  # eq. 6
    expected = torch.cat([fusion.back_home[0](cls), small[:, 1:]], dim=1)  # eq. 7
    torch.testing.assert_close(fusion(small, large)[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(dtype):
    fusion = CrossViTFusion(dims=(16, 32), num_heads=(2, 4)).to(dtype)
    small, large = fusion(torch.randn(2, 10, 16, dtype=dtype), torch.randn(2, 5, 32, dtype=dtype))
    assert small.dtype == large.dtype == dtype


def test_bad_input_names_the_argument():
    fusion = CrossViTFusion(dims=(16, 32), num_heads=(2, 4))
    with pytest.raises(ValueError, match=r"small must be \(batch, 1 \+ tokens, 16\).*got \(2, 10, 32\)"):
        fusion(torch.randn(2, 10, 32), torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="at least one patch token; got \\(2, 1, 32\\)"):
        fusion(torch.randn(2, 10, 16), torch.randn(2, 1, 32))
    with pytest.raises(ValueError, match="share the batch size, got 2 and 3"):
        fusion(torch.randn(2, 10, 16), torch.randn(3, 5, 32))
    with pytest.raises(ValueError, match="two branches each"):
        CrossViTFusion(dims=(16, 32, 64), num_heads=(2, 4, 8))
    with pytest.raises(ValueError, match="dim=30 must be divisible by num_heads=4"):
        CrossViTFusion(dims=(16, 30), num_heads=(2, 4))
