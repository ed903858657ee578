"""The layout tab's modes through gradio_client: each reaches the pipeline with its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attnctl import RegionalDiffusionPipeline

PROMPT = "a red circle and a blue square"
REGIONS = "a red circle: 0.05, 0.3, 0.45, 0.7\na blue square: 0.55, 0.3, 0.95, 0.7"
EMPTY_CANVAS = {"background": None, "layers": [], "composite": None}


@pytest.mark.parametrize(("mode", "settings"), [
    ("bias", dict(layout_strength=0.5, layout_until=0.5, mask_special="boxes")),
    ("prompts", dict(base_ratio=0.3)),
])
def test_each_mode_matches_the_pipeline(client, tiny_sd_path, mode, settings):
    _, guided, _, details = client.predict(
        str(tiny_sd_path), PROMPT, "", REGIONS, EMPTY_CANVAS, 4, 2, 5.0, mode,
        settings.get("layout_strength", 1.0), settings.get("layout_until", 1.0), settings.get("mask_special", "off"),
        settings.get("base_ratio", 0.2), api_name="/layout",
    )
    pipe = RegionalDiffusionPipeline.from_pretrained(tiny_sd_path)
    regions = [("a red circle", (0.05, 0.3, 0.45, 0.7)), ("a blue square", (0.55, 0.3, 0.95, 0.7))]
    direct = pipe(PROMPT, regions=regions, layout_mode=mode, num_inference_steps=2, guidance_scale=5.0,
                  generator=torch.Generator("cpu").manual_seed(4), **settings)
    assert np.array_equal(np.asarray(Image.open(guided).convert("RGB")), np.asarray(direct.images[0]))
    assert details["layout"]["layout_mode"] == mode
