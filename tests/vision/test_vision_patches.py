"""Reversible patches for Hugging Face ViT / CLIP vision towers: attention maps, rollout, restoration."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
    ViTForImageClassification,
)

from attnctl.vision.neighborhood import cls_window_attention_reference
from attnctl.vision.patches import AttentionPatch, find_vision_tower, record_attention, windowed_attention

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def tiny_vit(image_size=32):
    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=8, num_labels=3, **TINY)
    return ViTForImageClassification(config).eval()


def tiny_clip_vision():
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, **TINY)).eval()


def tiny_clip():
    torch.manual_seed(0)
    text = dict(
        vocab_size=64, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1, **TINY
    )
    config = CLIPConfig(
        text_config=text, vision_config=dict(image_size=32, patch_size=8, **TINY), projection_dim=16
    )
    return CLIPModel(config).eval()


def pixels(size=32, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_find_vision_tower_reads_patch_and_native_grid():
    tower = find_vision_tower(tiny_vit(image_size=48))
    assert (tower.patch_size, tower.native_grid, len(tower.attention_layers)) == ((8, 8), (6, 6), 2)
    clip = tiny_clip()
    tower = find_vision_tower(clip)
    assert tower.model is clip.vision_model and len(tower.attention_layers) == 2
    with pytest.raises(ValueError, match="model of type Linear has no ViT or CLIP vision tower"):
        find_vision_tower(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("build", [tiny_vit, tiny_clip_vision])
def test_recorded_maps_are_the_eager_attention_and_outputs_are_unchanged(build):
    model = build()
    x = pixels()
    with torch.no_grad():
        stock_sdpa = model(x)[0]
        with record_attention(model) as maps:
            recorded = model(x)[0]
        model.set_attn_implementation("eager")
        eager = model(x, output_attentions=True)
    assert torch.equal(recorded, eager[0])  # the same eager function runs
    torch.testing.assert_close(recorded, stock_sdpa, rtol=1e-5, atol=1e-5)
    assert len(maps.maps) == 2
    for mine, theirs in zip(maps.maps, eager.attentions):
        assert torch.equal(mine, theirs)


def test_patch_restores_the_implementation_even_after_an_exception():
    model = tiny_vit()
    with pytest.raises(RuntimeError, match="boom"), record_attention(model):
        assert model.config._attn_implementation.startswith("attnctl_vision_")
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        model(pixels())  # runs with the restored implementation


def test_patches_do_not_nest_and_close_is_idempotent():
    model = tiny_vit()
    patch = record_attention(model)
    with pytest.raises(ValueError, match="already runs the attnctl patch"):
        record_attention(model)
    patch.close()
    patch.close()
    assert model.config._attn_implementation == "sdpa"


def test_clip_text_tower_is_not_patched():
    model = tiny_clip()
    with record_attention(model) as maps, torch.no_grad():
        assert model.config.text_config._attn_implementation == "sdpa"
        model.get_text_features(input_ids=torch.tensor([[0, 5, 6, 1]]))
        assert maps.maps == []
        model.get_image_features(pixel_values=pixels())
        assert len(maps.maps) == 2
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_saliency_follows_the_input_grid_and_resets_per_call():
    model = tiny_vit()
    with record_attention(model) as maps, torch.no_grad():
        with pytest.raises(ValueError, match="no forward pass was recorded yet"):
            maps.saliency()
        model(pixels(size=64), interpolate_pos_encoding=True)
        assert maps.grid == (8, 8) and maps.maps[0].shape == (2, 4, 65, 65)
        saliency = maps.saliency()
        model(pixels(size=32))
        assert maps.grid == (4, 4) and len(maps.maps) == 2
    assert saliency.shape == (2, 8, 8)
    torch.testing.assert_close(maps.rollout().sum(-1), torch.ones(2, 17))


def test_custom_patch_sees_layers_in_order():
    seen = []

    def spy(patch, module, query, key, value, attention_mask, **kwargs):
        seen.append((patch.layer_index(module), patch.grid, tuple(query.shape)))
        return torch.zeros_like(query).transpose(1, 2), None

    model = tiny_clip_vision()
    with AttentionPatch(model, spy), torch.no_grad():
        model(pixels())
    assert seen == [(0, (4, 4), (2, 4, 17, 8)), (1, (4, 4), (2, 4, 17, 8))]


@pytest.mark.parametrize("build", [tiny_vit, tiny_clip_vision])
def test_window_covering_the_grid_runs_the_stock_function(build):
    model = build()
    x = pixels(size=64)
    with torch.no_grad():
        stock = model(x, interpolate_pos_encoding=True)[0]
        with windowed_attention(model, window=8):
            assert torch.equal(model(x, interpolate_pos_encoding=True)[0], stock)
        model.set_attn_implementation("eager")
        eager = model(x, interpolate_pos_encoding=True)[0]
        with windowed_attention(model, window=(8, 9)):
            assert torch.equal(model(x, interpolate_pos_encoding=True)[0], eager)


def _last_tokens(model, x):
    """(batch, 1 + H*W, dim) hidden states after the last layer, for any tower."""
    return model(x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("build", [tiny_vit, tiny_clip_vision])
def test_native_window_on_a_larger_input_matches_the_dense_oracle(build):
    model = build()
    x = pixels(size=64)  # 8x8 patches; trained at 4x4

    def oracle(patch, module, query, key, value, attention_mask, scaling=None, **kwargs):
        out = cls_window_attention_reference(query, key, value, patch.grid, (4, 4), scale=scaling)
        return out.transpose(1, 2), None

    with torch.no_grad():
        full = _last_tokens(model, x)
        with AttentionPatch(model, oracle):
            expected = _last_tokens(model, x)
        with windowed_attention(model) as patch:
            windowed = _last_tokens(model, x)
    assert patch.window == (4, 4)
    torch.testing.assert_close(windowed, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(windowed, full, atol=1e-2)
    assert model.config._attn_implementation == "sdpa"


def test_windowed_attention_rejects_bad_windows_and_training_dropout():
    model = tiny_vit()
    with pytest.raises(ValueError, match="window must be a positive integer, got 0"):
        windowed_attention(model, window=0)
    assert model.config._attn_implementation == "sdpa"  # nothing was patched
    torch.manual_seed(0)
    dropping = ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=8, attention_probs_dropout_prob=0.1, **TINY)
    ).train()
    with (
        windowed_attention(dropping, window=2),
        pytest.raises(ValueError, match=r"call model.eval\(\).*dropout=0.1"),
    ):
        dropping(pixels())


def test_package_exports_patches_lazily():
    import attnctl.vision as vision

    assert vision.windowed_attention is windowed_attention and vision.record_attention is record_attention
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        vision.nothing  # noqa: B018
