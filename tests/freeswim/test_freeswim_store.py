"""The attention store on Wan's video grids: per-token maps (batch, text, frames, h, w), checked by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnctl.core import AttentionController, AttentionStore
from attnctl.freeswim.wan_processor import wan_processor_factory
from attnctl.models.tiny_wan import build_tiny_wan_variant

RUN = dict(prompt="a cat walking", num_frames=5, height=32, width=48, num_inference_steps=1,
           max_sequence_length=16, guidance_scale=1.0, output_type="latent")


def test_store_records_video_maps_equal_to_a_hand_computed_softmax():
    pipe = build_tiny_wan_variant("t2v")
    pipe.set_progress_bar_config(disable=True)
    model, layer = pipe.transformer, pipe.transformer.blocks[0].attn2
    inputs = {}
    layer.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.update(hidden=args[0], context=kwargs.get("encoder_hidden_states", None)
                                                   if len(args) < 2 else args[1]), with_kwargs=True)
    stock = pipe(**RUN, generator=torch.Generator().manual_seed(0)).frames
    store = AttentionStore(layer_filter=lambda info: info.name == "blocks.0.attn2.processor")
    with AttentionController([store]).installed(model, processor_factory=wan_processor_factory(model)):
        observed = pipe(**RUN, generator=torch.Generator().manual_seed(0)).frames
    # observing leaves the output unchanged up to rounding (explicit softmax on that layer instead of fused SDPA)
    torch.testing.assert_close(observed, stock, rtol=0, atol=1e-5)
    maps = store.maps()
    assert store.num_records == 1 and maps.shape == (1, 16, 2, 4, 6)  # (batch, text, frames, latent h, latent w)

    # by hand: softmax(q k^T / sqrt(d)) of that layer (Wan's RMS norms across heads), head mean, per frame resize
    query = layer.norm_q(layer.to_q(inputs["hidden"])).unflatten(2, (layer.heads, -1)).transpose(1, 2)
    key = layer.norm_k(layer.to_k(inputs["context"])).unflatten(2, (layer.heads, -1)).transpose(1, 2)
    probs = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1).mean(1)  # (b, q, text)
    grid = probs.transpose(1, 2).unflatten(2, (2, 2, 3)).flatten(1, 2)  # (b, text * frames, 2, 3)
    expected = F.interpolate(grid, size=(4, 6), mode="bilinear", align_corners=False).unflatten(1, (16, 2))
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)
    assert store.maps(size=(8, 12)).shape == (1, 16, 2, 8, 12)
