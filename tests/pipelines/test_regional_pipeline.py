"""RegionalDiffusionPipeline: the pipeline contract on every family, then what is specific to regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import OnFlux, OnPixArt, OnSD, OnSD3, OnSD35, OnSDXL, StockContract, on_families
from diffusers import StableDiffusionPipeline

from attnctl import RegionalDiffusionPipeline
from attnctl.composer import box_cells

PROMPT = "a red car next to a blue bird"
BAD_REGIONS = [
    ([("green frog", (0, 0, 1, 1))], "'green frog' does not occur in prompt"),
    ([("red car", (0.5, 0, 0.5, 1))], r"regions\[0\] box .* is empty or outside the image"),
    ([("red car", (0, 0, 1.2, 1))], "outside the image"),
]


class RegionalContract(StockContract):
    pipeline_class = RegionalDiffusionPipeline
    prompt = PROMPT
    prompts = [PROMPT, PROMPT]  # phrases are located in every prompt of a batch
    control_on = {"regions": [("red car", (0.0, 0.0, 0.5, 1.0)), ("blue bird", (0.5, 0.0, 1.0, 0.5))]}
    control_off = {"regions": None}
    bad_arguments = [(dict(regions=regions), message) for regions, message in BAD_REGIONS]


(TestRegionalSD, TestRegionalSDXL, TestRegionalSD3, TestRegionalSD35, TestRegionalFlux,
 TestRegionalPixArt) = on_families(RegionalContract, OnSD, OnSDXL, OnSD3, OnSD35, OnFlux, OnPixArt)


@pytest.fixture(scope="module")
def pipe(load_tiny_sd):
    return load_tiny_sd(RegionalDiffusionPipeline)


def _run(pipeline, **overrides):
    kwargs = dict(prompt=PROMPT, num_inference_steps=3, height=48, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    kwargs.update(overrides)
    return pipeline(**kwargs)


def test_whole_image_regions_equal_stock_stable_diffusion_exactly(pipe, load_tiny_sd):
    stock = load_tiny_sd(StableDiffusionPipeline)
    expected = _run(stock).images
    out = _run(pipe, regions=[("red car", (0, 0, 1, 1)), ("blue bird", (0, 0, 1, 1))])
    assert np.array_equal(out.images, expected)
    assert np.array_equal(_run(pipe).images, expected)


def test_regions_change_the_image_and_are_reported(pipe):
    plain = _run(pipe).images
    out = _run(pipe, regions=[("red car", (0.0, 0.2, 0.5, 1.0)), ("blue bird", (0.6, 0.0, 1.0, 0.4))])
    assert not np.array_equal(out.images, plain)
    assert out.region_tokens == [[2, 3], [7, 8]]
    assert [mask.size for mask in out.region_masks] == [(64, 48), (64, 48)]
    car = np.asarray(out.region_masks[0]) > 0
    assert car[9:, :32].all() and not car[:, 32:].any() and not car[:9].any()  # rows from floor(0.2 * 48)
    stored = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert stored == {"AttnProcessor2_0"}  # processors restored after the call


def test_box_cells_cover_every_overlapped_cell_and_never_vanish():
    assert box_cells((0.0, 0.0, 0.5, 0.5), (4, 6)).sum() == 2 * 3
    assert box_cells((0.1, 0.1, 0.12, 0.12), (2, 2)).sum() == 1


def test_explicit_positions_cannot_name_the_start_token(pipe):
    with pytest.raises(ValueError, match=r"regions\[0\]=\[0, 2\] must be non-empty positions in \[1, 76\]"):
        _run(pipe, regions=[([0, 2], (0, 0, 1, 1))])


def test_t5_positions_start_at_the_first_word(tiny_pixart_path, tiny_flux_path):
    for path in (tiny_pixart_path, tiny_flux_path):
        pipe = RegionalDiffusionPipeline.from_pretrained(path)
        assert pipe.region_tokens(PROMPT, [("a red car", (0, 0, 1, 1)), ("blue bird", (0, 0, 1, 1))]) == [
            [0, 1, 2], [6, 7]]


def test_sd3_phrases_sit_in_the_clip_rows_and_in_the_t5_rows(tiny_sd3_path):
    pipe = RegionalDiffusionPipeline.from_pretrained(tiny_sd3_path)
    assert pipe.region_tokens(PROMPT, [("blue bird", (0, 0, 1, 1))]) == [[7, 8, 77 + 6, 77 + 7]]
