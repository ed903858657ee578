"""RegionalDiffusionPipeline's layout modes: off equals stock, each mode acts, bad settings raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from attnctl import RegionalDiffusionPipeline
from attnctl.layout import special_positions
from attnctl.models.tiny_families import TINY_MAX_SEQUENCE_LENGTH

PROMPT = "a red car next to a blue bird"
REGIONS = [("red car", (0.0, 0.2, 0.5, 1.0)), ("blue bird", (0.6, 0.0, 1.0, 0.4))]


@pytest.fixture(scope="module")
def pipe(load_tiny_sd):
    return load_tiny_sd(RegionalDiffusionPipeline)


@pytest.fixture(scope="module")
def stock(load_tiny_sd):
    pipeline = load_tiny_sd(StableDiffusionPipeline)
    return _run(pipeline).images


def _run(pipeline, **overrides):
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, height=32, width=48, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    kwargs.update(overrides)
    return pipeline(**kwargs)


@pytest.mark.parametrize("mode", ["forbid", "bias", "prompts", "guidance"])
def test_no_regions_is_stock_in_every_mode(pipe, stock, mode):
    assert np.array_equal(_run(pipe, layout_mode=mode, mask_special="off").images, stock)


def test_bias_with_zero_strength_is_stock(pipe, stock):
    assert np.array_equal(_run(pipe, regions=REGIONS, layout_mode="bias", layout_strength=0.0).images, stock)


def test_guidance_with_zero_step_size_is_stock(pipe, stock):
    assert np.array_equal(_run(pipe, regions=REGIONS, layout_mode="guidance", layout_strength=0.0).images, stock)


def test_guidance_moves_the_latents_and_changes_the_image(pipe, load_tiny_sd):
    square = dict(height=32, width=32, num_inference_steps=3)  # maps on the 16x16 grid of a square latent
    stock = load_tiny_sd(StableDiffusionPipeline)
    expected = _run(stock, **square).images
    guided = _run(pipe, regions=REGIONS, layout_mode="guidance", layout_strength=50.0, layout_until=0.5, **square)
    assert np.isfinite(guided.images).all() and not np.array_equal(guided.images, expected)


def test_regional_prompts_with_base_ratio_one_is_stock_up_to_rounding(pipe, stock):
    out = _run(pipe, regions=REGIONS, layout_mode="prompts", base_ratio=1.0)
    np.testing.assert_allclose(out.images, stock, atol=1e-5)


@pytest.mark.parametrize("settings", [
    dict(layout_mode="bias", layout_strength=0.5),
    dict(layout_mode="bias", layout_strength=0.5, layout_until=0.5, mask_special="boxes"),
    dict(layout_mode="forbid", mask_special="all"),
    dict(layout_mode="prompts", base_prompt="a car and a bird", region_weights=[1.0, 2.0]),
    dict(layout_mode="prompts", region_prompts=["a red car", "a blue bird"], base_ratio=0.0),
])
def test_each_mode_changes_the_image_and_restores_the_processors(pipe, stock, settings):
    out = _run(pipe, regions=REGIONS, **settings)
    assert np.isfinite(out.images).all() and not np.array_equal(out.images, stock)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}


@pytest.mark.parametrize(("settings", "message"), [
    (dict(layout_mode="paint"), "layout_mode='paint'"),
    (dict(mask_special="eot"), "mask_special='eot'"),
    (dict(layout_mode="prompts", mask_special="boxes"), "mask_special='boxes' works with"),
    (dict(layout_mode="guidance", mask_special="all"), "not 'guidance'"),
    (dict(layout_mode="bias", layout_strength=-1.0), "layout_strength=-1.0"),
    (dict(layout_mode="bias", layout_until=0.0), "layout_until=0.0"),
    (dict(layout_mode="prompts", base_ratio=1.5), "base_ratio=1.5"),
    (dict(layout_mode="prompts", region_weights=[1.0]), "region_weights has 1 entries for 2 regions"),
    (dict(layout_mode="prompts", region_weights=[1.0, 0.0]), "must all be finite and > 0"),
    (dict(layout_mode="prompts", region_prompts=["a car", " "]), "non-empty strings"),
])
def test_bad_layout_settings_raise(pipe, settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _run(pipe, regions=REGIONS, **settings)


def test_special_positions_are_the_end_and_padding_keys(pipe):
    call = {**pipe.default_call(), "prompt": PROMPT}
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    end = ids.index(pipe.tokenizer.eos_token_id)
    assert special_positions(pipe, call) == list(range(end, pipe.tokenizer.model_max_length))
    with pytest.raises(ValueError, match="end at different token positions"):
        special_positions(pipe, {**call, "prompt": [PROMPT, "a red car"]})


def test_special_positions_cover_both_text_encoders_of_sd3(tiny_sd3_path):
    sd3 = RegionalDiffusionPipeline.from_pretrained(tiny_sd3_path)
    call = {**sd3.default_call(), "prompt": "a red car", "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}
    clip_rows = sd3.tokenizer_max_length
    words = sd3.family_text.word_positions(sd3, "a red car", "a red car", "prompt", call)
    expected = [j for j in range(1, clip_rows + TINY_MAX_SEQUENCE_LENGTH) if j not in words]
    assert special_positions(sd3, call) == expected
    assert any(j < clip_rows for j in expected) and any(j >= clip_rows for j in expected)
