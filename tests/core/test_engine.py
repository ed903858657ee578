"""The attention engine: several key sets, mask fusion and the hook order."""

from __future__ import annotations

import pytest
import torch

from attnctl.core import (
    AttentionCall,
    AttentionControl,
    LayerInfo,
    RunState,
    attend,
    combine_masks,
    sdpa,
)


def _call(batch=2):
    return AttentionCall(LayerInfo("x.attn2.processor", True, "other", -1, 0), None, RunState(), batch,
                         5, None)


def _naive(q, k, v, mask=None):
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1) @ v


def test_several_key_sets_are_a_weighted_sum_of_attentions():
    torch.manual_seed(0)
    q, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 6, 4)
    keys = torch.randn(3, 2, 2, 6, 4)
    weights = torch.tensor([[0.5, 1.0], [0.25, 0.0], [0.25, 0.0]])
    out = attend(_call(), [], q, keys, v, key_weights=weights)
    expected = sum(weights[i].view(-1, 1, 1, 1) * _naive(q, keys[i], v) for i in range(3))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_several_key_sets_need_weights():
    with pytest.raises(ValueError, match="key_weights"):
        attend(_call(), [], torch.randn(1, 1, 2, 4), torch.randn(2, 1, 1, 3, 4), torch.randn(1, 1, 3, 4))


def test_combine_masks_passes_a_single_mask_through_and_sums_several():
    keep = torch.tensor([True, False, True])
    bias = torch.tensor([0.0, 1.0, -2.0])
    assert combine_masks(None, keep) is keep
    assert combine_masks(None, None) is None
    assert torch.equal(combine_masks(keep, bias), torch.tensor([0.0, float("-inf"), -2.0]))


class _Bias(AttentionControl):
    def logits_bias(self, call, query_len, key_len):
        bias = torch.zeros(query_len, key_len)
        bias[:, 0] = float("-inf")
        return bias


class _Editor(AttentionControl):
    def __init__(self):
        self.order = []

    def needs_probs(self, call):
        return True

    def edit_logits(self, call, logits):
        self.order.append("logits")
        return logits

    def edit_probs(self, call, probs):
        self.order.append("probs")
        return probs

    def observe(self, call, probs):
        self.order.append("observe")
        assert torch.allclose(probs.sum(-1), torch.ones(()))


def test_bias_reaches_both_paths_and_hooks_run_in_order():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    fused = attend(_call(1), [_Bias()], q, k, v)
    editor = _Editor()
    materialised = attend(_call(1), [_Bias(), editor], q, k, v)
    expected = _naive(q, k[:, :, 1:], v[:, :, 1:])
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(materialised, expected, rtol=1e-5, atol=1e-6)
    assert editor.order == ["logits", "probs", "observe"]


def test_kernel_hook_replaces_sdpa_and_conflicts_are_reported():
    class Doubling(AttentionControl):
        def kernel(self, call):
            return lambda q, k, v, mask: 2 * sdpa(q, k, v, mask)

    q = k = v = torch.randn(1, 1, 3, 4)
    torch.testing.assert_close(attend(_call(1), [Doubling()], q, k, v), 2 * sdpa(q, k, v, None))
    with pytest.raises(ValueError, match="kernel"):
        attend(_call(1), [Doubling(), Doubling()], q, k, v)
    with pytest.raises(ValueError, match="probabilities"):
        attend(_call(1), [Doubling(), _Editor()], q, k, v)
