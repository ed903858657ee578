"""ConViT's gated positional self-attention: gate limits, locality initialisation, shapes and bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.convit import GatedPositionalSelfAttention, local_centres, relative_positions
from attnctl.vision.grid import merge_heads, naive_attention, split_heads


def test_gate_fully_content_is_plain_attention():
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(dim=16, num_heads=4, qkv_bias=True)
    with torch.no_grad():
        gpsa.gating_param.fill_(float("-inf"))  # sigmoid = 0: content attention only
    x = torch.randn(2, 5, 6, 16)
    query, key = (split_heads(t, 4) for t in gpsa.qk(x).chunk(2, dim=-1))
    expected = gpsa.proj(merge_heads(naive_attention(query, key, split_heads(gpsa.v(x), 4)), (5, 6)))
    torch.testing.assert_close(gpsa(x), expected, rtol=1e-5, atol=1e-6)


def test_gate_fully_positional_ignores_content_and_local_init_centres_each_head():
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(dim=18, num_heads=9, locality_strength=2.0)
    with torch.no_grad():
        gpsa.gating_param.fill_(float("inf"))
    first, second = gpsa.attention(torch.randn(1, 7, 7, 18)), gpsa.attention(torch.randn(1, 7, 7, 18))
    torch.testing.assert_close(first, second)
    query = 3 * 7 + 3  # the centre of the 7x7 grid
    peaks = first[0, :, query].argmax(dim=-1)
    expected = [(3 + int(row)) * 7 + 3 + int(col) for row, col in local_centres(9)]
    assert peaks.tolist() == expected
    assert torch.equal(gpsa.v.weight, torch.eye(18))


def test_local_centres_form_a_square_of_offsets():
    assert local_centres(9) == [(r, c) for r in (-1.0, 0.0, 1.0) for c in (-1.0, 0.0, 1.0)]
    assert local_centres(4) == [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)]
    assert len(local_centres(6)) == 4  # heads past the square keep uniform positional attention


def test_relative_positions_are_key_minus_query():
    features = relative_positions((2, 3))
    assert features.shape == (6, 6, 3)
    # query (0, 0) -> key (1, 2): delta = (1, 2), squared distance 5
    assert features[0, 5].tolist() == [5.0, 1.0, 2.0]
    assert features[5, 0].tolist() == [5.0, -1.0, -2.0]


def test_rows_are_probability_distributions_for_any_gate():
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(dim=16, num_heads=4)
    probs = gpsa.attention(torch.randn(2, 4, 5, 16))
    assert probs.shape == (2, 4, 20, 20)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_and_dtype(dtype):
    gpsa = GatedPositionalSelfAttention(dim=16, num_heads=4).to(dtype)
    out = gpsa(torch.randn(2, 3, 5, 16, dtype=dtype))
    assert out.shape == (2, 3, 5, 16) and out.dtype == dtype


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="locality_strength must be positive.*got 0"):
        GatedPositionalSelfAttention(dim=16, num_heads=4, locality_strength=0)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        GatedPositionalSelfAttention(dim=16, num_heads=0)
    with pytest.raises(ValueError, match=r"\(batch, H, W, 16\); got \(2, 20, 16\)"):
        GatedPositionalSelfAttention(dim=16, num_heads=4)(torch.randn(2, 20, 16))
