"""The classical checker against rendered ground truth (where the answer is known exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from attnctl.shapes.checker import classify_shape, detect_shapes, has_object, srgb_to_lab
from attnctl.shapes.render import render_scene
from attnctl.shapes.scene import COLOURS, SHAPES, SIZE_RANGES, sample_scene


def _objects(scene):
    return sorted((obj.colour, obj.shape) for obj in scene.objects)


def test_checker_reads_every_colour_shape_and_size():
    rng = np.random.default_rng(0)
    for colour in COLOURS:
        for shape in SHAPES:
            for size in SIZE_RANGES:
                scene = sample_scene(rng, 1, colours=(colour,), shapes=(shape,), sizes=(size,))
                detections = detect_shapes(render_scene(scene))
                assert [(d.colour, d.shape) for d in detections] == [(colour, shape)], (colour, shape, size)


def test_checker_accuracy_on_random_multi_object_renders():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, int(rng.integers(1, 4))) for _ in range(150)]
    correct = [
        sorted((d.colour, d.shape) for d in detect_shapes(render_scene(s))) == _objects(s) for s in scenes
    ]
    assert np.mean(correct) >= 0.99


def test_detection_positions_match_the_layout():
    scene = sample_scene(np.random.default_rng(2), 2, "to the left of")
    detections = {(d.colour, d.shape): d for d in detect_shapes(render_scene(scene))}
    for obj in scene.objects:
        found = detections[(obj.colour, obj.shape)]
        # centroid vs box centre: a triangle's centroid sits side/6 below its box centre
        assert abs(found.cx + 0.5 - obj.cx) < 1.5 and abs(found.cy + 0.5 - obj.cy) < obj.side / 5
    assert has_object(list(detections.values()), scene.objects[0].colour, scene.objects[0].shape)


def test_blank_and_grey_images_have_no_detections():
    assert detect_shapes(np.full((64, 64, 3), 245, np.uint8)) == []
    noise = np.random.default_rng(0).integers(100, 140, size=(64, 64, 1)).repeat(3, axis=-1).astype(np.uint8)
    assert detect_shapes(noise) == []


def test_shape_classes_of_ideal_masks():
    yy, xx = np.mgrid[:40, :40]
    assert classify_shape((xx - 20) ** 2 + (yy - 20) ** 2 < 15**2) == "circle"
    assert classify_shape((abs(xx - 20) < 12) & (abs(yy - 20) < 12)) == "square"
    assert classify_shape((yy > 5) & (yy < 35) & (abs(xx - 20) < (yy - 5) / 2)) == "triangle"


def test_lab_of_reference_colours():
    white, red = srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0]]))
    np.testing.assert_allclose(white, [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(red, [53.24, 80.09, 67.20], atol=0.3)


def test_bad_image_raises():
    with pytest.raises(ValueError, match="image shape"):
        detect_shapes(np.zeros((64, 64)))
