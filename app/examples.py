"""Example images for the tabs, drawn with the coloured-shapes renderer the default model was trained on.

They are written each time the app is built into a private folder made for this process under the system temp
directory (``mkdtemp``: a fresh name, mode 0700, so no other user can plant a symlink there; Gradio serves files
from the temp directory) and removed at exit, so the repository holds no binary examples.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from attnctl.batch.atomic import atomic_path
from attnctl.shapes.render import render_scene
from attnctl.shapes.scene import BACKGROUND, Scene, ShapeObject


@functools.cache
def example_folder() -> Path:
    """This process's private example folder (created on first use, removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="attnctl-ui-examples-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def shapes_image(*objects: ShapeObject) -> Image.Image:
    """The shapes on the plain training background."""
    return render_scene(Scene(tuple(objects), "and", tuple(False for _ in objects)))


def silhouette(image: Image.Image) -> Image.Image:
    """White where ``image`` differs from the plain background: the mask of the shapes drawn on it."""
    pixels = np.asarray(image, dtype=np.int16)  # (H, W, 3)
    differs = np.abs(pixels - np.array(BACKGROUND)).max(-1) > 24  # (H, W)
    return Image.fromarray(differs.astype(np.uint8) * 255)


def composer_files(folder: Path | None = None) -> dict[str, str]:
    """Paths of a background (a blue square), a subject (a red circle) and the subject's mask (default folder:
    :func:`example_folder`)."""
    folder = folder or example_folder()
    subject = shapes_image(ShapeObject("circle", "red", "medium", 32.0, 32.0, 24.0))
    images = {
        "background": shapes_image(ShapeObject("square", "blue", "medium", 18.0, 32.0, 22.0)),
        "subject": subject,
        "subject-mask": silhouette(subject),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.png")
        with atomic_path(Path(paths[name])) as temp:  # an app built earlier may be reading the previous copy
            image.save(temp)
    return paths


def moving_circle_video(folder: Path | None = None, frames: int = 17) -> str:
    """An mp4 of a red circle crossing the frame: ``frames`` frames (4k+1, as Wan's VAE needs), 64 x 64."""
    from diffusers.utils import export_to_video

    path = (folder or example_folder()) / "moving-circle.mp4"
    video = [
        shapes_image(ShapeObject("circle", "red", "medium", 14.0 + 36.0 * index / (frames - 1), 32.0, 20.0))
        for index in range(frames)
    ]
    with atomic_path(path) as temp:
        export_to_video(video, str(temp), fps=8)
    return str(path)
