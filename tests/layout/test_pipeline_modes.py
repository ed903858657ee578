"""RegionalDiffusionPipeline's layout modes: off equals stock, each mode acts, bad settings raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from attnctl import RegionalDiffusionPipeline

PROMPT = "a red car next to a blue bird"
REGIONS = [("red car", (0.0, 0.2, 0.5, 1.0)), ("blue bird", (0.6, 0.0, 1.0, 0.4))]


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    pipeline = RegionalDiffusionPipeline.from_pretrained(tiny_sd_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def stock(tiny_sd_path):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    pipeline.set_progress_bar_config(disable=True)
    return _run(pipeline).images


def _run(pipeline, **overrides):
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, height=32, width=48, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    kwargs.update(overrides)
    return pipeline(**kwargs)


@pytest.mark.parametrize("mode", ["forbid", "bias", "prompts"])
def test_no_regions_is_stock_in_every_mode(pipe, stock, mode):
    assert np.array_equal(_run(pipe, layout_mode=mode, mask_special="off").images, stock)


def test_bias_with_zero_strength_is_stock(pipe, stock):
    assert np.array_equal(_run(pipe, regions=REGIONS, layout_mode="bias", layout_strength=0.0).images, stock)


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
