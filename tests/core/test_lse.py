"""attention_with_lse (fused CPU path and explicit path) and the exact merge of disjoint key sets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnctl.core.lse as lse_module
from attnctl.core.lse import attention_with_lse, merge_attention


def qkv(queries=5, keys=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 8, generator=generator) for n in (queries, keys, keys)]


def definition(query, key, value, keep=None, scale=None):
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query @ key.transpose(-1, -2)) * scale
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits.softmax(-1) @ value, logits.logsumexp(-1)


@pytest.mark.parametrize("fused", [True, False])
def test_output_and_lse_match_the_definition_with_bool_and_additive_masks(fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(lse_module, "_CPU_FLASH", None)
    query, key, value = qkv()
    keep = torch.rand(5, 9, generator=torch.Generator().manual_seed(1)) > 0.4
    keep[:, 0] = True  # every query keeps a key
    expected_out, expected_lse = definition(query, key, value, keep, scale=0.3)
    additive = torch.zeros(5, 9).masked_fill(~keep, float("-inf"))
    for mask in (keep, additive):
        out, lse = attention_with_lse(query, key, value, attn_mask=mask, scale=0.3)
        torch.testing.assert_close(out, expected_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(lse, expected_lse, atol=2e-6, rtol=0)
        assert lse.dtype == torch.float32


def test_fused_cpu_output_is_sdpa_bit_for_bit():
    query, key, value = qkv(seed=2)
    out, _ = attention_with_lse(query, key, value, scale=0.2)
    assert torch.equal(out, F.scaled_dot_product_attention(query, key, value, scale=0.2))


def test_merging_two_key_sets_is_attention_over_their_union():
    query, key, value = qkv(keys=11, seed=3)
    first = attention_with_lse(query, key[:, :, :4], value[:, :, :4])
    second = attention_with_lse(query, key[:, :, 4:], value[:, :, 4:])
    merged = merge_attention(*first, *second)
    torch.testing.assert_close(merged, F.scaled_dot_product_attention(query, key, value), atol=2e-6, rtol=0)
