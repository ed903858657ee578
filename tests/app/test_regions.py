"""Painted masks from image-editor layers and typed boxes."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from attnctl.app.regions import drawn_mask, editor_background, layer_boxes, phrase_regions, typed_box
from PIL import Image


def _layer(size, box=None):
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = (255, 59, 48, 255)
    return Image.fromarray(pixels)


def test_drawn_mask_is_the_union_of_painted_alpha_over_layers():
    background = Image.new("RGB", (8, 6))
    mask = drawn_mask(
        {"background": background, "layers": [_layer((8, 6), (0, 0, 2, 2)), _layer((8, 6), (5, 3, 8, 6))]},
        "Background",
    )
    expected = np.zeros((6, 8), bool)
    expected[0:2, 0:2] = expected[3:6, 5:8] = True
    assert np.array_equal(mask, expected)


def test_nothing_painted_is_none():
    assert drawn_mask({"background": Image.new("RGB", (8, 6)), "layers": [_layer((8, 6))]}, "Subject") is None
    assert drawn_mask({"background": Image.new("RGB", (8, 6)), "layers": None}, "Subject") is None
    assert drawn_mask(None, "Subject") is None


def test_a_layer_of_another_size_is_an_error():
    with pytest.raises(gr.Error, match="Subject: a drawn layer is 4x4 but the image is 8x6"):
        drawn_mask(
            {"background": Image.new("RGB", (8, 6)), "layers": [_layer((4, 4), (0, 0, 1, 1))]}, "Subject"
        )


def test_editor_background_needs_an_upload():
    assert editor_background({"background": Image.new("RGBA", (3, 2))}, "Background").mode == "RGB"
    with pytest.raises(gr.Error, match="Background is missing: upload an image"):
        editor_background({"background": None, "layers": []}, "Background")


def test_typed_box():
    assert typed_box("4, 8, 20 30", "Target box") == (4.0, 8.0, 20.0, 30.0)
    assert typed_box("  ", "Target box") is None
    with pytest.raises(gr.Error, match="type four numbers"):
        typed_box("1, 2, 3", "Target box")
    with pytest.raises(gr.Error, match="type four numbers"):
        typed_box("1, 2, 3, x", "Target box")
    with pytest.raises(gr.Error, match="x0 must be below x1"):
        typed_box("10, 2, 3, 8", "Target box")


def test_layer_boxes_are_fractions_of_the_layer_per_layer():
    boxes = layer_boxes({"layers": [_layer((10, 5), (2, 1, 6, 4)), _layer((10, 5)), None]})
    assert boxes == [(0.2, 0.2, 0.6, 0.8), None, None]


def test_phrase_regions_take_typed_boxes_or_the_painted_layer_of_their_line():
    drawn = [None, (0.5, 0.0, 1.0, 0.5)]
    regions = phrase_regions("a red car: 0, 0, 0.5, 1\n\n a bench \n", drawn)
    assert regions == [
        ("a red car", (0.0, 0.0, 0.5, 1.0), "typed"),
        ("a bench", (0.5, 0.0, 1.0, 0.5), "painted"),
    ]


def test_phrase_regions_errors_say_what_to_add():
    with pytest.raises(gr.Error, match=r"Region 1 \('a bench'\) has no box: add ': x0, y0, x1, y1'"):
        phrase_regions("a bench", [None])
    with pytest.raises(gr.Error, match="Region 1 box is ' 0, 0, 1': type four numbers"):
        phrase_regions("a bench: 0, 0, 1", [])
    with pytest.raises(gr.Error, match="Regions is empty"):
        phrase_regions(" \n", [])
