"""Writing outputs: PNG with the generation record in text chunks, mp4 through diffusers' video export.

PNG text chunks (``tEXt``, or ``iTXt`` for non-Latin-1 text) hold ``prompt``, ``negative_prompt``, ``seed``,
``method``, ``model``, ``parameters`` (JSON), ``attnctl_version`` and ``attnctl`` (the full manifest record
as JSON), readable with ``PIL.Image.open(path).text`` or ``exiftool``. Metadata is data: nothing here ever
evaluates it. Videos carry no metadata; their record lives in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
from PIL.PngImagePlugin import PngInfo

from .atomic import atomic_path


def png_info(text: Mapping[str, str]) -> PngInfo:
    """PNG text chunks for ``text``: Latin-1 values as ``tEXt``, the rest as UTF-8 ``iTXt``."""
    info = PngInfo()
    for key, value in text.items():
        try:
            value.encode("latin-1")
            info.add_text(key, value)
        except UnicodeEncodeError:
            info.add_itxt(key, value)
    return info


def save_png(image: PIL.Image.Image, target: Path, text: Mapping[str, str]) -> None:
    """Save ``image`` to ``target`` atomically with ``text`` as PNG text chunks."""
    with atomic_path(target) as temp:
        image.save(temp, format="PNG", pnginfo=png_info(text))


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of the PNG at ``path``."""
    with PIL.Image.open(path) as image:
        image.load()
        return dict(image.text)


def save_mp4(frames: Sequence[Any], target: Path, fps: int) -> None:
    """Encode ``frames`` (PIL images or float arrays in [0, 1]) to an mp4 at ``target`` atomically.

    Uses ``diffusers.utils.export_to_video`` (imageio-ffmpeg), which pads sizes up to a multiple of 16.
    """
    from diffusers.utils import export_to_video

    with atomic_path(target) as temp:
        export_to_video(list(frames), str(temp), fps=fps)
