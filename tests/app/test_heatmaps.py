"""Heat-map overlays: colour ramp, blending and one captioned item per token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attnctl.app.heatmaps import HEAT_STOPS, heat_colours, overlay, token_overlays, unique_labels
from PIL import Image

from attnctl.core import TokenHeatmaps


def test_unique_labels_number_repeats():
    assert unique_labels(["a", "red", "car", "and", "a", "a"]) == ["a", "red", "car", "and", "a (2)", "a (3)"]


def test_heat_colours_hit_the_stops_and_interpolate_between_them():
    stops = len(HEAT_STOPS) - 1
    values = np.array([[0.0, 1.0 / stops, 1.0, 0.5 / stops]])
    colours = heat_colours(values)
    assert np.allclose(colours[0, :3], HEAT_STOPS[[0, 1, -1]])
    assert np.allclose(colours[0, 3], (HEAT_STOPS[0] + HEAT_STOPS[1]) / 2)


def test_overlay_blends_and_checks_the_size():
    image = Image.new("RGB", (4, 2), (100, 150, 200))
    assert np.array_equal(np.asarray(overlay(image, np.zeros((2, 4)), strength=0.0)), np.asarray(image))
    full = np.asarray(overlay(image, np.ones((2, 4)), strength=1.0))
    assert np.array_equal(full[0, 0], np.round(HEAT_STOPS[-1]).astype(np.uint8))
    with pytest.raises(ValueError, match="heat map is"):
        overlay(image, np.zeros((4, 2)))


def test_token_overlays_one_item_per_token_scaled_on_its_own():
    maps = torch.zeros(2, 2, 3)
    maps[0, 0, 0] = 5.0  # token "a": one hot pixel
    maps[1] = 0.25  # token "cat": flat map, scaled to zeros
    items = token_overlays(Image.new("RGB", (3, 2)), TokenHeatmaps(["a", "cat"], maps))
    assert [label for _, label in items] == ["a", "cat"]
    hot = np.asarray(items[0][0])
    assert hot[0, 0].tolist() != hot[1, 2].tolist()
    assert len({tuple(p) for p in np.asarray(items[1][0]).reshape(-1, 3)}) == 1
