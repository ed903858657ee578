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
    assert local_centres(9) == [(r, c) for c in (-1.0, 0.0, 1.0) for r in (-1.0, 0.0, 1.0)]
    assert local_centres(4) == [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]  # row offset fastest
    assert len(local_centres(6)) == 4  # heads past the square keep uniform positional attention


def test_relative_positions_are_key_minus_query():
    features = relative_positions((2, 3))
    assert features.shape == (6, 6, 3)
    # query (0, 0) -> key (1, 2): delta = (1, 2), squared distance 5
    assert features[0, 5].tolist() == [2.0, 1.0, 5.0]  # (delta_col, delta_row, squared distance)
    assert features[5, 0].tolist() == [-2.0, -1.0, 5.0]


def test_rows_are_probability_distributions_for_any_gate():
    torch.manual_seed(0)
    gpsa = GatedPositionalSelfAttention(dim=16, num_heads=4)
    probs = gpsa.attention(torch.randn(2, 4, 5, 16))
    assert probs.shape == (2, 4, 20, 20)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 20))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="locality_strength must be positive.*got 0"):
        GatedPositionalSelfAttention(dim=16, num_heads=4, locality_strength=0)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        GatedPositionalSelfAttention(dim=16, num_heads=0)
    with pytest.raises(ValueError, match=r"\(batch, H, W, 16\); got \(2, 20, 16\)"):
        GatedPositionalSelfAttention(dim=16, num_heads=4)(torch.randn(2, 20, 16))


def test_local_init_is_the_releases_head_order_and_channel_order():
    """ConViT's locality init (d'Ascoli et al. 2021, Sec. 3) as its release lays it out for 9 heads: head
    ``i + 3 j`` gets ``alpha * (2 (j - 1), 2 (i - 1), -1)`` on the features (delta_col, delta_row, |delta|^2)."""
    gpsa = GatedPositionalSelfAttention(dim=18, num_heads=9, locality_strength=1.5)
    expected = torch.zeros(9, 3)
    for i in range(3):
        for j in range(3):
            expected[i + 3 * j] = 1.5 * torch.tensor([2.0 * (j - 1), 2.0 * (i - 1), -1.0])
    assert torch.equal(gpsa.pos_proj.weight, expected)


def _release_state_dict(dim, num_heads, seed=0):
    """Random weights under the ConViT release's GPSA keys and shapes: ``qk`` (2 * dim, dim), ``v`` (dim, dim),
    ``proj`` (dim, dim) with bias, ``pos_proj`` (heads, 3) with bias, ``gating_param`` (heads,)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "qk.weight": (2 * dim, dim),
        "v.weight": (dim, dim),
        "proj.weight": (dim, dim),
        "proj.bias": (dim,),
        "pos_proj.weight": (num_heads, 3),
        "pos_proj.bias": (num_heads,),
        "gating_param": (num_heads,),
    }
    return {key: torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in shapes.items()}


def _literal_gpsa(x, weights, num_heads):
    """Eq. 4-5 token pair by token pair: content softmax(q k / sqrt(d)), positional softmax over
    pos_proj(delta_col, delta_row, |delta|^2), mixed by sigmoid(gating_param), renormalised, times v."""
    batch, height, width, dim = x.shape
    head_dim, tokens = dim // num_heads, height * width
    flat = x.reshape(batch, tokens, dim)
    q, k = (flat @ weights["qk.weight"].T).chunk(2, dim=-1)
    v = flat @ weights["v.weight"].T
    positions = [(n // width, n % width) for n in range(tokens)]
    out = torch.zeros_like(v)
    for h in range(num_heads):
        ch = slice(h * head_dim, (h + 1) * head_dim)
        gate = torch.sigmoid(weights["gating_param"][h])
        for query, (qr, qc) in enumerate(positions):
            features = torch.tensor(
                [[kc - qc, kr - qr, (kc - qc) ** 2 + (kr - qr) ** 2] for kr, kc in positions], dtype=x.dtype
            )
            positional = (features @ weights["pos_proj.weight"][h] + weights["pos_proj.bias"][h]).softmax(0)
            content = (k[:, :, ch] @ q[:, query, ch, None] * head_dim**-0.5)[..., 0].softmax(-1)  # (batch, keys)
            mixed = (1 - gate) * content + gate * positional
            mixed = mixed / mixed.sum(-1, keepdim=True)
            out[:, query, ch] = (mixed[:, :, None] * v[:, :, ch]).sum(1)
    return (out @ weights["proj.weight"].T + weights["proj.bias"]).reshape(batch, height, width, dim)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_release_state_dict_loads_unchanged_and_gives_the_literal_output(grid):
    weights = _release_state_dict(16, 4)
    gpsa = GatedPositionalSelfAttention(dim=16, num_heads=4).double()
    gpsa.load_state_dict(weights, strict=True)
    x = torch.randn(2, *grid, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpsa(x), _literal_gpsa(x, weights, 4), rtol=0, atol=1e-10)
