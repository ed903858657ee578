"""Example inputs from the shapes renderer: the subject mask is its silhouette; the circle video moves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from attnctl.app.examples import composer_files, moving_circle_video, shapes_image, silhouette
from diffusers.utils import load_video
from PIL import Image

from attnctl.shapes.scene import ShapeObject


def test_silhouette_covers_the_shape_and_nothing_else():
    mask = np.asarray(silhouette(shapes_image(ShapeObject("circle", "red", "medium", 20.0, 40.0, 24.0)))) > 0
    assert abs(mask.sum() - math.pi * 12**2) < 0.1 * math.pi * 12**2
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - 39.5) < 1 and abs(cols.mean() - 19.5) < 1


def test_composer_files_pair_the_subject_with_its_mask(tmp_path):
    paths = composer_files(tmp_path)
    subject, mask = Image.open(paths["subject"]), Image.open(paths["subject-mask"])
    assert subject.size == mask.size == Image.open(paths["background"]).size
    assert np.array_equal(np.asarray(mask), np.asarray(silhouette(subject.convert("RGB"))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background.png", "subject-mask.png", "subject.png"]


def test_moving_circle_video_has_4k_plus_1_frames_moving_right(tmp_path):
    frames = load_video(moving_circle_video(tmp_path, frames=9))
    assert len(frames) == 9 and frames[0].size == (64, 64)
    centres = [np.nonzero(np.asarray(silhouette(frame)))[1].mean() for frame in frames]
    assert all(later > earlier for earlier, later in zip(centres, centres[1:]))


def test_default_example_folder_is_private_to_this_process():
    import os
    import stat
    import tempfile

    from attnctl.app.examples import example_folder

    folder = Path(composer_files()["background"]).parent
    assert folder == example_folder() and folder.parent == Path(tempfile.gettempdir())
    assert folder.name.startswith("attnctl-ui-examples-") and folder.name != "attnctl-ui-examples"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and not folder.is_symlink()
