"""attnctl.checks: the kinds, the media converters and the pipeline argument table, value by value."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest

from attnctl import checks
from attnctl.checks import (
    Boxes,
    Choice,
    Flag,
    Integer,
    Number,
    Optional,
    Size,
    Text,
    TextList,
    mask_array,
    rgb_image,
    video_frames,
)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Integer(1, 10), 3, 3),
        (Integer(1, 10), 3.0, 3),  # web forms send whole floats
        (Number(0, 1), 1, 1.0),
        (Number(0, 1, open_low=True), 0.5, 0.5),
        (Text(), "a", "a"),
        (Text(allow_empty=True), "", ""),
        (Choice(("values", "keys", None)), None, None),
        (Flag(), True, True),
        (TextList(), ("a", "b"), ["a", "b"]),
        (Size(8), 64, (64, 64)),
        (Size(8), " 64x32 ", (64, 32)),
        (Boxes(), [[0, 0, 1, 2]], [(0.0, 0.0, 1.0, 2.0)]),
        (Optional(Integer(0, 5)), None, None),
    ],
)
def test_kinds_normalise_good_values(kind, value, expected):
    assert kind("x", value) == expected


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Integer(1, 10), 0, "a whole number from 1 to 10"),
        (Integer(1, 10), 2.5, "a whole number"),
        (Integer(1, 10), True, "a whole number"),
        (Integer(1, 10), math.nan, "a whole number"),
        (Integer(1, 10), "3", "a whole number"),
        (Number(0, 1), math.inf, r"a finite number in \[0, 1\]"),
        (Number(0, 1), math.nan, "a finite number"),
        (Number(0, 1, open_low=True), 0, r"\(0, 1\]"),
        (Text(), "  ", "a non-empty string"),
        (Choice(("values", "keys", None)), "value", "one of 'values', 'keys', null"),
        (Choice((1, 2)), True, "one of 1, 2"),  # True == 1 but is not a solver order
        (Flag(), 1, "true or false"),
        (TextList(), "a red car", r"a list of strings, e\.g\. \['a red car'\], not one string"),
        (TextList(), ["a", ""], "a list of non-empty strings"),
        (Size(8), 0, "multiples of 8"),
        (Size(8), 60, "multiples of 8"),
        (Size(8), "64x", "WIDTHxHEIGHT"),
        (Size(8), 10**9, "multiples of 8 from 8 to 8192"),
        (Boxes(), [[1, 0, 0, 1]], "a box"),
        (Boxes(), [], "a non-empty list of boxes"),
    ],
)
def test_kinds_refuse_bad_values_naming_them(kind, value, expected):
    with pytest.raises(ValueError, match=rf"^x(\[0\])?=.* is invalid: expected .*{expected}"):
        kind("x", value)


def test_sixteen_bit_grey_image_is_scaled_to_eight_bits_not_clipped():
    grey = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    image = rgb_image("image", PIL.Image.fromarray(grey))  # mode I;16
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 100], [200, 255]]


def test_alpha_is_dropped_and_grey_made_rgb():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour is kept, the alpha dropped
    assert np.asarray(rgb_image("image", PIL.Image.fromarray(rgba, "RGBA")))[0, 0].tolist() == [200, 0, 0]
    assert np.asarray(rgb_image("image", np.full((2, 2), 7, np.uint8)))[0, 0].tolist() == [7, 7, 7]


def test_float_arrays_in_unit_range_are_scaled_and_0_255_floats_refused():
    assert np.asarray(rgb_image("image", np.full((2, 2, 3), 0.5)))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match=r"image='float array with values 1\.\.254' is invalid: expected floats in"):
        rgb_image("image", np.arange(12, dtype=np.float64).reshape(2, 2, 3) * 23.0 + 1)
    with pytest.raises(ValueError, match="NaN"):
        rgb_image("image", np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb_image("image", np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="image='str' is invalid: expected a PIL image"):
        rgb_image("image", "background.png")


def test_sixteen_bit_mask_low_values_are_not_subject():
    values = np.array([[0, 200], [40000, 65535]], dtype=np.uint16)  # 200 of 65535 is black, not subject
    for mask in (values, PIL.Image.fromarray(values)):
        assert (mask_array("mask", mask) >= 0.5).tolist() == [[False, False], [True, True]]


def test_binary_integer_masks_and_colour_masks():
    assert mask_array("mask", np.array([[0, 1]], np.uint8)).tolist() == [[0.0, 1.0]]
    colour = np.zeros((1, 2, 4), np.uint8)
    colour[0, 1, :3] = 255  # white where the subject is; alpha is dropped
    assert mask_array("mask", colour).tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="mask=.* is invalid: expected 8-bit values"):
        mask_array("mask", np.array([[0, 300]], np.int64))


def test_video_frames_convert_modes_and_refuse_tiny_frames():
    frames = video_frames("video", [PIL.Image.new("RGBA", (32, 16))] * 3, 16)
    assert [frame.mode for frame in frames] == ["RGB"] * 3
    assert len(video_frames("video", np.zeros((5, 16, 16, 3), np.uint8), 16)) == 5
    with pytest.raises(ValueError, match=r"video='frames of 2x2 pixels' is invalid: expected frames at least 16"):
        video_frames("video", [PIL.Image.new("RGB", (2, 2))] * 5, 16)
    with pytest.raises(ValueError, match="one size"):
        video_frames("video", [PIL.Image.new("RGB", (16, 16)), PIL.Image.new("RGB", (32, 16))], 16)
    with pytest.raises(ValueError, match="non-empty list of frames"):
        video_frames("video", [], 16)


class _Pipe:
    vae_scale_factor = 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"guidance_scale": math.nan}, "guidance_scale=nan"),
        ({"guidance_scale": math.inf}, "guidance_scale=inf"),
        ({"num_inference_steps": -3}, "num_inference_steps=-3"),
        ({"num_inference_steps": 0}, "num_inference_steps=0"),
        ({"height": 0}, "height=0"),
        ({"width": 63}, "width=63 is invalid: expected a multiple of 8"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt=0"),
        ({"prompt": []}, r"prompt=\[\]"),
        ({"prompt": ["a", 3]}, "prompt="),
        ({"attention_scale": math.inf}, "attention_scale=inf"),
        ({"cache_interval": math.nan}, "cache_interval=nan"),
        ({"cache_interval": math.inf}, "cache_interval=inf"),
        ({"phrases": "a red car"}, "phrases='a red car'"),
        ({"regions": "a red car"}, "regions='a red car'"),
        ({"regions": [("a cat", (0, 0, math.nan, 1))]}, r"regions\[0\]="),
        ({"num_inference_steps": 3, "strength": 0.2}, "strength=0.2"),
        ({"tau_a": "0.3"}, "tau_a='0.3'"),
        ({"image": np.full((4, 4, 3), 200.0)}, "image="),
    ],
)
def test_check_call_names_the_argument_and_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        checks.check_call(_Pipe(), arguments)


def test_check_call_leaves_good_and_unknown_arguments_alone():
    checks.check_call(_Pipe(), {"prompt": ["a", "b"], "height": None, "width": 64, "guidance_scale": 0.0,
                                "num_inference_steps": 1, "anything_else": object(), "phrases": [["a"], []]})


def test_whole_floats_of_integer_arguments_become_ints_and_nothing_else_changes():
    from attnctl.checks import whole_numbers

    given = {"num_inference_steps": 20.0, "height": 64.0, "num_images_per_prompt": 2.0, "max_iter_to_alter": 5.0,
             "guidance_scale": 7.0, "strength": 1.0, "prompt": "a red circle", "clip_skip": None}
    converted = whole_numbers(given)
    assert converted == given
    assert [name for name, value in converted.items() if isinstance(value, int)] == [
        "num_inference_steps", "height", "num_images_per_prompt", "max_iter_to_alter"]
    assert isinstance(converted["guidance_scale"], float) and isinstance(converted["strength"], float)
