"""HaloNet blocked local attention: the dense-mask oracle, the full-attention limits, shapes and bad input."""

from __future__ import annotations

import pytest
import torch

from attnctl.vision.grid import FullGridAttention, naive_attention
from attnctl.vision.halo import HaloAttention2d, halo_attention, halo_key_mask

GRID = (12, 8)


def _qkv(seed=0, heads=2, dim=4, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(3, 2, heads, GRID[0] * GRID[1], dim, dtype=dtype).unbind(0)


@pytest.mark.parametrize(
    ("block", "halo", "mask_padding"),
    [(4, 1, True), (4, 1, False), (2, 3, True), (2, 3, False), (4, 0, True)],
)
def test_matches_the_dense_mask_oracle(block, halo, mask_padding):
    q, k, v = _qkv()
    out = halo_attention(q, k, v, GRID, block, halo, mask_padding)
    expected = halo_attention(q, k, v, GRID, block, halo, mask_padding, reference=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_interior_and_border_blocks_both_match_the_oracle():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 16 * 16, 4).unbind(0)
    border = ~halo_key_mask((16, 16), 4, 1).all(dim=-1)
    assert 0 < int(border.sum()) < 16  # 12 border blocks around 4 interior ones
    out = halo_attention(q, k, v, (16, 16), 4, 1)
    reference = halo_attention(q, k, v, (16, 16), 4, 1, reference=True)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_unmasked_padding_differs_from_masked_at_the_border_only():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 12 * 12, 4).unbind(0)
    masked = halo_attention(q, k, v, (12, 12), 4, 1, True).reshape(2, 2, 12, 12, 4)
    unmasked = halo_attention(q, k, v, (12, 12), 4, 1, False).reshape(2, 2, 12, 12, 4)
    assert not torch.allclose(masked[:, :, 0, 0], unmasked[:, :, 0, 0])  # corner block sees padding
    torch.testing.assert_close(masked[:, :, 4:8, 4:8], unmasked[:, :, 4:8, 4:8])  # inner block never does


def test_halo_covering_the_grid_is_full_attention():
    q, k, v = _qkv()
    full = naive_attention(q, k, v)
    torch.testing.assert_close(halo_attention(q, k, v, GRID, 4, 12), full, rtol=1e-5, atol=1e-6)


def test_key_mask_counts_real_tokens():
    mask = halo_key_mask(GRID, 4, 1)  # 3x2 blocks of 4x4, windows of 6x6 slots
    # block rows see 5, 6, 5 real rows; both block columns see 5 real columns (W=8)
    assert mask.sum(-1).tolist() == [25, 25, 30, 30, 25, 25]


def test_module_equals_full_attention_when_the_block_covers_the_grid():
    torch.manual_seed(1)
    halo = HaloAttention2d(dim=16, num_heads=2, block_size=4, halo_size=8).eval()
    full = FullGridAttention(dim=16, num_heads=2).eval()
    full.load_state_dict(halo.state_dict())
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(halo(x), full(x), rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        HaloAttention2d(dim=16, num_heads=2, block_size=0, halo_size=1)
    with pytest.raises(ValueError, match="halo must be a non-negative integer, got -1"):
        HaloAttention2d(dim=16, num_heads=2, block_size=2, halo_size=-1)
    with pytest.raises(ValueError, match="dim=15 must be divisible by num_heads=2"):
        HaloAttention2d(dim=15, num_heads=2, block_size=2, halo_size=1)
    module = HaloAttention2d(dim=16, num_heads=2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match="block_size=4 must divide the token grid 6x8"):
        module(torch.randn(1, 6, 8, 16))
    with pytest.raises(
        ValueError, match=r"channels-last token grid \(batch, H, W, 16\); got \(1, 16, 8, 8\)"
    ):
        module(torch.randn(1, 16, 8, 8))
