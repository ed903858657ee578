"""Input checks and pixel preparation: the issue's bad-input errors, subject fitting, the pixel paste."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from attnctl.composer import check_same_size, prepare, target_box_from, to_bool_mask, working_size
from attnctl.composer.geometry import PixelBox


def _background(width=64, height=48):
    return PIL.Image.new("RGB", (width, height), (0, 120, 0))


def test_empty_mask_is_rejected():
    with pytest.raises(ValueError, match="subject_mask is empty"):
        to_bool_mask(np.zeros((8, 8), np.uint8), "subject_mask")


def test_mismatched_image_and_mask_sizes_are_rejected():
    with pytest.raises(ValueError, match="subject_mask is 8x6 but subject_image is 10x6"):
        check_same_size(PIL.Image.new("RGB", (10, 6)), np.ones((6, 8), bool), "subject_image", "subject_mask")
    with pytest.raises(ValueError, match="target_mask is 64x64 but image is 64x48"):
        target_box_from(None, np.ones((64, 64), np.uint8) * 255, _background())


@pytest.mark.parametrize("box", [(-1, 0, 10, 10), (0, 0, 65, 10), (0, 40, 10, 49)])
def test_box_outside_the_image_is_rejected(box):
    with pytest.raises(ValueError, match=r"target_box=.* lies outside the background image of size 64x48"):
        target_box_from(box, None, _background())


def test_empty_box_and_both_or_neither_box_inputs_are_rejected():
    with pytest.raises(ValueError, match="is empty"):
        target_box_from((10, 10, 10, 20), None, _background())
    with pytest.raises(ValueError, match="exactly one of target_box"):
        target_box_from(None, None, _background())


def test_target_mask_gives_its_bounding_box():
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 30:50] = 255
    assert target_box_from(None, mask, _background()) == PixelBox(30, 10, 50, 20)


def test_working_size_snaps_to_the_unet_stride():
    assert working_size(_background(100, 70), None, None, 64) == (64, 64)
    assert working_size(_background(130, 70), None, None, 4) == (68, 128)
    with pytest.raises(ValueError, match="height=50 must be a positive multiple of 64"):
        working_size(_background(), 50, None, 64)


def test_fitted_subject_keeps_aspect_inside_the_box_and_same_domain_pastes_pixels():
    subject = PIL.Image.new("RGB", (40, 40), (255, 255, 255))
    mask = np.zeros((40, 40), bool)
    mask[10:30, 15:25] = True  # a 10 x 20 (w x h) subject: cropped, then fitted into a 20 x 20 box -> 10 x 20
    subject.paste((250, 0, 0), (15, 10, 25, 30))
    prepared = prepare(_background(), subject, mask, PixelBox(8, 8, 28, 28), (48, 64), "same", faithful=False)
    assert prepared.placement.subject_hw == (20, 10)
    layout = prepared.placement.at((48, 64))
    composite = np.asarray(prepared.background)
    subject_pixels = composite.reshape(-1, 3)[layout.target_cells.numpy()]
    assert (subject_pixels == (250, 0, 0)).all()
    outside = ~layout.target_mask().numpy()
    assert (composite[outside] == (0, 120, 0)).all()
    cross = prepare(_background(), subject, mask, PixelBox(8, 8, 28, 28), (48, 64), "cross", faithful=False)
    assert (np.asarray(cross.background) == (0, 120, 0)).all()
