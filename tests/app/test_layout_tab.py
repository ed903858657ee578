"""The layout tab through gradio_client: typed and painted boxes reach the pipeline; errors are messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from attnctl import RegionalDiffusionPipeline

PROMPT = "a red circle and a blue square"
TYPED = "a blue square: 0.55, 0.3, 0.95, 0.7"


@pytest.fixture(scope="module")
def canvas(tmp_path_factory):
    """A 512 x 512 canvas with the box (0.1, 0.2, 0.5, 0.6) painted on layer Region 1, Region 2 left empty."""
    folder = tmp_path_factory.mktemp("layout-canvas")
    Image.new("RGB", (512, 512), "white").save(folder / "background.png")
    first = np.zeros((512, 512, 4), np.uint8)
    first[102:307, 51:256] = (229, 72, 77, 255)
    Image.fromarray(first).save(folder / "region-1.png")
    Image.fromarray(np.zeros((512, 512, 4), np.uint8)).save(folder / "region-2.png")
    return {
        "background": handle_file(str(folder / "background.png")),
        "layers": [handle_file(str(folder / "region-1.png")), handle_file(str(folder / "region-2.png"))],
        "composite": None,
    }


def _layout(client, model, regions, canvas, seed=4):
    return client.predict(model, PROMPT, "", regions, canvas, seed, 2, 5.0, api_name="/layout")


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_painted_and_typed_boxes_match_the_pipeline(client, tiny_sd_path, canvas):
    stock, guided, boxes, details = _layout(client, str(tiny_sd_path), f"a red circle\n{TYPED}", canvas)
    painted = (51 / 512, 102 / 512, 256 / 512, 307 / 512)
    regions = [("a red circle", painted), ("a blue square", (0.55, 0.3, 0.95, 0.7))]
    pipe = RegionalDiffusionPipeline.from_pretrained(tiny_sd_path)
    for path, stage_regions in ((stock, None), (guided, regions)):
        direct = pipe(
            PROMPT,
            regions=stage_regions,
            num_inference_steps=2,
            guidance_scale=5.0,
            generator=torch.Generator("cpu").manual_seed(4),
        )
        assert np.array_equal(_pixels(path), np.asarray(direct.images[0]))
    assert [(r["phrase"], r["from"]) for r in details["regions"]] == [
        ("a red circle", "painted"),
        ("a blue square", "typed"),
    ]
    assert details["regions"][0]["box"] == [round(v, 4) for v in painted]
    assert [a["label"] for a in boxes["annotations"]] == ["a red circle", "a blue square"]


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ("a red circle\na blue square", "Region 2 ('a blue square') has no box"),
        ("a green dog: 0.1, 0.1, 0.5, 0.5", "regions[0]: 'a green dog' does not occur in prompt="),
        (
            "a red circle: 0.1, 0.1, 1.5, 0.5",
            "regions[0] box (0.1, 0.1, 1.5, 0.5) is empty or outside the image",
        ),
        ("  ", "Regions is empty"),
    ],
)
def test_bad_input_is_a_message(client, tiny_sd_path, canvas, regions, message):
    with pytest.raises(AppError) as caught:
        _layout(client, str(tiny_sd_path), regions, canvas)
    assert message in str(caught.value)
