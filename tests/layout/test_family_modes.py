"""The layout modes on every text-to-image family: off is stock, on acts, unsupported combinations refuse."""

from __future__ import annotations

import pytest
import torch

from attnctl import RegionalDiffusionPipeline
from attnctl.models.tiny_families import TINY_MAX_SEQUENCE_LENGTH

PROMPT = "a red car next to a blue bird"
REGIONS = [("red car", (0.0, 0.0, 0.5, 1.0)), ("blue bird", (0.5, 0.0, 1.0, 0.5))]
T5 = {"max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}
FAMILIES = {
    "tiny_sdxl_path": {},
    "tiny_pixart_path": {**T5, "clean_caption": False, "use_resolution_binning": False},
    "tiny_sd3_path": T5,
    "tiny_flux_path": {**T5, "height": 32, "width": 32},  # its 256 x 256 default is 50x slower
}


def _images(pipe, extra, **settings):
    return pipe(PROMPT, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0),
                **extra, **settings).images


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    pipe = RegionalDiffusionPipeline.from_pretrained(request.getfixturevalue(request.param))
    pipe.set_progress_bar_config(disable=True)
    return pipe, FAMILIES[request.param]


def test_bias_off_is_stock_and_on_with_masked_end_keys_acts(family):
    pipe, extra = family
    stock = _images(pipe, extra)
    assert torch.equal(_images(pipe, extra, regions=REGIONS, layout_mode="bias", layout_strength=0.0), stock)
    biased = _images(pipe, extra, regions=REGIONS, layout_mode="bias", layout_strength=1.0, mask_special="boxes")
    assert torch.isfinite(biased).all() and not torch.equal(biased, stock)


def test_regional_prompts_run_on_cross_attention_and_refuse_joint_attention_and_masks(family):
    pipe, extra = family
    if pipe.family == "sdxl":
        out = _images(pipe, extra, regions=REGIONS, layout_mode="prompts")
        assert torch.isfinite(out).all() and not torch.equal(out, _images(pipe, extra))
        return
    message = "encoder attention mask" if pipe.family == "pixart" else "joint attention"
    with pytest.raises(ValueError, match=message):
        _images(pipe, extra, regions=REGIONS, layout_mode="prompts")


def test_guidance_runs_on_sdxl_and_refuses_transformer_families(family):
    pipe, extra = family
    if pipe.family == "sdxl":
        out = _images(pipe, extra, regions=REGIONS, layout_mode="guidance", layout_strength=50.0)
        assert torch.isfinite(out).all() and not torch.equal(out, _images(pipe, extra))
        return
    with pytest.raises(ValueError, match="layout_mode='guidance' runs on UNet pipelines"):
        _images(pipe, extra, regions=REGIONS, layout_mode="guidance", layout_strength=10.0)
