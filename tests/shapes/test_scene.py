"""Scene sampling: determinism, captions, placement constraints and the held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from attnctl.shapes.render import render_batch, render_scene
from attnctl.shapes.scene import (
    BACKGROUND,
    CAPTION_WORDS,
    HELD_OUT_COLOUR_PAIRS,
    HELD_OUT_SINGLE_CAPTIONS,
    IMAGE_SIZE,
    is_training_colour_set,
    sample_any_scene,
    sample_codec_scene,
    sample_scene,
    sample_training_scene,
)


def _training_scenes(seed: int, count: int):
    rng = np.random.default_rng(seed)
    return [sample_training_scene(rng) for _ in range(count)]


def test_training_stream_is_deterministic_per_seed():
    first, again, other = _training_scenes(7, 50), _training_scenes(7, 50), _training_scenes(8, 50)
    assert first == again
    assert first != other
    assert np.array_equal(render_batch(first[:4]), render_batch(again[:4]))


def test_training_scenes_avoid_held_out_pairs_and_captions():
    scenes = _training_scenes(0, 2000)
    for scene in scenes:
        assert is_training_colour_set({obj.colour for obj in scene.objects}), scene.caption
        assert scene.caption not in HELD_OUT_SINGLE_CAPTIONS
    counts = np.bincount([len(scene.objects) for scene in scenes], minlength=4)
    assert counts[1:].min() > 200  # all of one, two and three objects occur


def test_captions_use_only_the_tokenizer_vocabulary():
    for scene in _training_scenes(1, 500):
        assert set(scene.caption.split()) <= set(CAPTION_WORDS), scene.caption


def test_caption_wording():
    rng = np.random.default_rng(0)
    scene = sample_scene(
        rng, 2, "to the left of", ("orange", "blue"), ("star", "square"), ("small", "large"), 1.0
    )
    assert scene.caption == "a small orange star to the left of a large blue square"
    single = sample_scene(rng, 1, colours=("orange",), shapes=("circle",), size_word_probability=0.0)
    assert single.caption == "an orange circle"


@pytest.mark.parametrize("relation", ["to the left of", "to the right of", "above", "below"])
def test_spatial_relations_hold_in_the_layout(relation):
    rng = np.random.default_rng(3)
    for _ in range(20):
        first, second = sample_scene(rng, 2, relation).objects
        dx, dy = second.cx - first.cx, second.cy - first.cy
        expected = {"to the left of": dx > 0, "to the right of": dx < 0, "above": dy > 0, "below": dy < 0}
        assert expected[relation]


def test_objects_stay_inside_and_apart():
    rng = np.random.default_rng(5)
    for _ in range(200):
        objects = sample_scene(rng, 3).objects
        for obj in objects:
            assert obj.side / 2 <= obj.cx <= IMAGE_SIZE - obj.side / 2
            assert obj.side / 2 <= obj.cy <= IMAGE_SIZE - obj.side / 2
        for i, a in enumerate(objects):
            for b in objects[:i]:
                assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) > (a.side + b.side) / 2


def test_held_out_splits_are_nonempty_and_render_on_the_background():
    assert len(HELD_OUT_COLOUR_PAIRS) == 3 and len(HELD_OUT_SINGLE_CAPTIONS) == 12
    image = np.asarray(render_scene(sample_scene(np.random.default_rng(0), 1)))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert tuple(image[0, 0]) == BACKGROUND


def test_bad_arguments_raise_value_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_objects=4"):
        sample_scene(rng, 4)
    with pytest.raises(ValueError, match="relation='above'"):
        sample_scene(rng, 3, "above")


def test_codec_scenes_include_the_held_out_pairs():
    rng = np.random.default_rng(0)
    colour_sets = [{obj.colour for obj in sample_codec_scene(rng).objects} for _ in range(500)]
    assert not all(is_training_colour_set(colours) for colours in colour_sets)


def test_any_scene_holds_nothing_out_and_keeps_the_training_layouts():
    """The CLIP phase's scenes: held-out colour pairs and single captions appear, with the training relations."""
    rng = np.random.default_rng(0)
    scenes = [sample_any_scene(rng) for _ in range(3000)]
    assert any(not is_training_colour_set({obj.colour for obj in scene.objects}) for scene in scenes)
    assert {scene.caption for scene in scenes} & set(HELD_OUT_SINGLE_CAPTIONS)
    counts = np.bincount([len(scene.objects) for scene in scenes], minlength=4)[1:] / len(scenes)
    np.testing.assert_allclose(counts, [0.4, 0.45, 0.15], atol=0.03)
    two = [scene for scene in scenes if len(scene.objects) == 2]
    assert 0.42 < sum(scene.relation != "and" for scene in two) / len(two) < 0.54  # 60% x 4 of 5 RELATIONS
