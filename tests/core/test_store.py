"""Attention store: per-token maps averaged over heads, layers and steps, resized to the image."""

from __future__ import annotations

import torch

from attnctl.core import AttentionController, AttentionStore
from attnctl.models.tiny import build_tiny_sd_components


def test_store_records_every_cross_layer_and_step_at_latent_size():
    unet = build_tiny_sd_components()["unet"].eval()
    store = AttentionStore()
    controller = AttentionController([store])
    sample, context = torch.randn(2, 4, 12, 8), torch.randn(2, 5, 16)  # non-square latent
    with controller.installed(unet):
        for t in (900, 500):
            unet(sample, t, encoder_hidden_states=context)
    cross_layers = sum(layer.is_cross for layer in controller.layers)
    assert store.num_records == 2 * cross_layers
    maps = store.maps()
    assert maps.shape == (2, 5, 12, 8)
    # every pixel's attention over the text tokens is a softmax row: bilinear resizing keeps the sum
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 12, 8), rtol=1e-5, atol=1e-5)
    assert store.maps((48, 32)).shape == (2, 5, 48, 32)


def test_store_filters_layers_and_steps():
    unet = build_tiny_sd_components()["unet"].eval()
    store = AttentionStore(layer_filter=lambda layer: layer.place == "up", max_tokens=16, steps={1})
    with AttentionController([store]).installed(unet):
        for t in (900, 500):
            unet(torch.randn(1, 4, 8, 8), t, encoder_hidden_states=torch.randn(1, 5, 16))
    assert store.num_records == 2  # the two 4x4 up-block cross layers, step 1 only
