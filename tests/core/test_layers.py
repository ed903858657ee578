"""Layer naming and token-grid recovery."""

from __future__ import annotations

import pytest

from attnctl.core import LayerInfo, token_grid


@pytest.mark.parametrize(
    "name, place, index",
    [
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", "down", 1),
        ("mid_block.attentions.0.transformer_blocks.0.attn1.processor", "mid", 0),
        ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor", "up", 3),
        ("blocks.7.attn1.processor", "block", 7),
        ("something.processor", "other", -1),
    ],
)
def test_layer_info_parses_block_and_index(name, place, index):
    layer = LayerInfo.from_name(name, True, 3)
    assert (layer.place, layer.block_index, layer.order) == (place, index, 3)
    assert layer.module_path == name.removesuffix(".processor")


@pytest.mark.parametrize(
    "tokens, latent, grid",
    [(64 * 64, (64, 64), (64, 64)), (16 * 16, (64, 64), (16, 16)), (12 * 8, (24, 16), (12, 8)),
     (3 * 2, (9, 5), (3, 2)), (5 * 3, (9, 5), (5, 3))],
)
def test_token_grid_follows_strided_downsampling(tokens, latent, grid):
    assert token_grid(tokens, latent) == grid


def test_token_grid_rejects_a_non_grid():
    with pytest.raises(ValueError, match="num_tokens=7"):
        token_grid(7, (8, 8))
