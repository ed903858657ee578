"""Input checking and pixel-space preparation: background canvas, subject canvas, target box and the paste.

Two geometries (reference notes Sec. 1): ``faithful`` follows the released ``scripts/main.py`` (square canvas, the
*whole* subject image scaled so its longer side is ``round(max(w, h) / (C / 2), 2) * C / 2``, box centre rounded to
two decimals); the default crops the subject to its mask, fits it inside the box keeping its aspect ratio and keeps
the background's own aspect ratio (sizes snapped to the UNet's stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ..checks import mask_array, rgb_image
from .geometry import PixelBox, Placement, check_box, mask_bbox


def to_rgb_image(image, name: str) -> PIL.Image.Image:
    """A PIL RGB image from any image input (:func:`attnctl.checks.rgb_image`: 16-bit scaled, alpha dropped)."""
    return rgb_image(name, image)


def to_bool_mask(mask, name: str) -> np.ndarray:
    """An (H, W) bool mask from a mask of any mode or depth: pixels at or above half intensity are ``True``."""
    binary = mask_array(name, mask) >= 0.5
    if not binary.any():
        raise ValueError(f"{name} is empty (no pixel at or above half intensity); pass a mask that marks the region")
    return binary


def check_same_size(image: PIL.Image.Image, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    """Raise unless the mask has the image's pixel size."""
    if mask.shape != (image.height, image.width):
        raise ValueError(
            f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} but {image_name} is {image.width}x{image.height}; "
            "pass a mask of the same size as its image"
        )


def target_box_from(target_box, target_mask, background: PIL.Image.Image) -> PixelBox:
    """The user's box in background pixels, from ``target_box`` (x0, y0, x1, y1) or the bounding box of
    ``target_mask``; exactly one of the two must be given."""
    if (target_box is None) == (target_mask is None):
        raise ValueError("pass exactly one of target_box (x0, y0, x1, y1) or target_mask")
    if target_mask is not None:
        mask = to_bool_mask(target_mask, "target_mask")
        check_same_size(background, mask, "image", "target_mask")
        return mask_bbox(mask)
    values = tuple(float(v) for v in target_box)
    if len(values) != 4:
        raise ValueError(f"target_box must be (x0, y0, x1, y1) in background pixels; got {target_box!r}")
    box = PixelBox(*values)
    check_box(box, background.size, "target_box")
    return box


@dataclass
class PreparedInputs:
    """Everything the sampler needs from the images, at the working resolution."""

    background: PIL.Image.Image  # the (H, W) background, or for the "same" domain the pixel composite
    reference: PIL.Image.Image  # the subject centred on a black (H, W) canvas
    placement: Placement
    box: PixelBox  # the user's box in working pixels


def working_size(background: PIL.Image.Image, height: int | None, width: int | None, multiple: int) -> tuple[int, int]:
    """(height, width) of the canvas: the given sizes, else the background's size rounded down to ``multiple``."""
    height = height if height is not None else max(multiple, background.height // multiple * multiple)
    width = width if width is not None else max(multiple, background.width // multiple * multiple)
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{name}={value} must be a positive multiple of {multiple} (the UNet's stride in pixels)")
    return height, width


def prepare(
    background: PIL.Image.Image,
    subject: PIL.Image.Image,
    subject_mask: np.ndarray,
    user_box: PixelBox,
    canvas_hw: tuple[int, int],
    domain: str,
    faithful: bool,
) -> PreparedInputs:
    """Resize the background, build the subject canvas and placement and, for ``domain="same"``, paste in pixels."""
    height, width = canvas_hw
    box = user_box.scaled(width / background.width, height / background.height)
    canvas_bg = background.resize((width, height), PIL.Image.LANCZOS)
    if faithful:
        scaled, scaled_mask, centre = _release_subject(subject, subject_mask, box, height)
    else:
        scaled, scaled_mask, centre = _fitted_subject(subject, subject_mask, box, height, width)
    top, left = (height - scaled.height) // 2, (width - scaled.width) // 2
    reference = PIL.Image.new("RGB", (width, height))
    reference.paste(scaled, (left, top))
    canvas_mask = torch.zeros(height, width, dtype=torch.bool)
    canvas_mask[top:top + scaled.height, left:left + scaled.width] = torch.from_numpy(scaled_mask)
    placement = Placement(canvas_mask, (scaled.height, scaled.width), centre, centre_sampling=not faithful,
                          clamp_to_grid=not faithful)
    composite = paste_in_pixels(canvas_bg, reference, placement) if domain == "same" else canvas_bg
    return PreparedInputs(composite, reference, placement, box)


def _release_subject(subject, mask, box: PixelBox, canvas: int):
    """The released scaling: longer side ``int(scale * C / 2)`` with ``scale = round(max(w, h) / (C / 2), 2)``."""
    half = canvas / 2
    scale = round(max(box.width, box.height) / half, 2)
    aspect = subject.height / subject.width
    if aspect > 1:
        size = (int(scale * half / aspect), int(scale * half))
    else:
        size = (int(scale * half), int(scale * half * aspect))
    _check_subject_size(size)
    centre = (round((box.y0 + box.height / 2) / canvas, 2), round((box.x0 + box.width / 2) / canvas, 2))
    return subject.resize(size, PIL.Image.BICUBIC), _resize_mask(mask, size), centre


def _fitted_subject(subject, mask, box: PixelBox, height: int, width: int):
    """The subject cropped to its mask and scaled to the largest size that fits the box, aspect kept."""
    crop = mask_bbox(mask)
    x0, y0, x1, y1 = (int(v) for v in (crop.x0, crop.y0, crop.x1, crop.y1))
    subject, mask = subject.crop((x0, y0, x1, y1)), mask[y0:y1, x0:x1]
    scale = min(box.width / subject.width, box.height / subject.height)
    size = (max(1, round(subject.width * scale)), max(1, round(subject.height * scale)))
    centre = ((box.y0 + box.y1) / 2 / height, (box.x0 + box.x1) / 2 / width)
    return subject.resize(size, PIL.Image.BICUBIC), _resize_mask(mask, size), centre


def _check_subject_size(size: tuple[int, int]) -> None:
    if min(size) < 1:
        raise ValueError(f"the subject would be scaled to {size[0]}x{size[1]} pixels; make target_box larger")


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = PIL.Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size, PIL.Image.NEAREST)) >= 128


def paste_in_pixels(background: PIL.Image.Image, reference: PIL.Image.Image, placement: Placement) -> PIL.Image.Image:
    """Copy the subject's masked pixels from the canvas into the target box (the "same" domain's pixel composite)."""
    layout = placement.at(placement.canvas_hw)
    r_top, r_bottom, r_left, r_right = layout.reference_box
    t_top, t_bottom, t_left, t_right = layout.target_box
    out = np.asarray(background).copy()
    subject = np.asarray(reference)[r_top:r_bottom, r_left:r_right]
    keep = placement.canvas_mask.numpy()[r_top:r_bottom, r_left:r_right, None]
    region = out[t_top:t_bottom, t_left:t_right]
    out[t_top:t_bottom, t_left:t_right] = np.where(keep, subject, region)
    return PIL.Image.fromarray(out)
