"""Regions a person draws or types: masks and boxes from ``gr.ImageEditor`` layers, boxes from text."""

from __future__ import annotations

import numpy as np
from PIL import Image

from attnctl.checks import rgb_image

from .validation import user_error, user_errors

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (left, top, right, bottom)


def editor_background(editor: dict | None, label: str) -> Image.Image:
    """The image uploaded into an image editor as 8-bit RGB (:func:`attnctl.checks.rgb_image`: 16-bit scaled,
    alpha dropped); an error naming ``label`` when there is none or it is not an image."""
    background = (editor or {}).get("background")
    if background is None:
        raise user_error(f"{label} is missing: upload an image.")
    with user_errors():
        return rgb_image(label, background)


def painted(layer: Image.Image) -> np.ndarray:
    """(H, W) bool: where a layer holds paint (alpha above zero), whatever the brush colour."""
    return np.asarray(layer.convert("RGBA"))[..., 3] > 0


def drawn_mask(editor: dict | None, label: str) -> np.ndarray | None:
    """(H, W) bool: pixels painted on any layer of an image editor; ``None`` when nothing is painted."""
    layers = [layer for layer in (editor or {}).get("layers") or [] if layer is not None]
    background = (editor or {}).get("background")
    union = None
    for layer in layers:
        if background is not None and layer.size != background.size:
            raise user_error(
                f"{label}: a drawn layer is {layer.width}x{layer.height} but the image is "
                f"{background.width}x{background.height}; clear the drawing and paint on the uploaded image."
            )
        union = painted(layer) if union is None else union | painted(layer)
    return union if union is not None and union.any() else None


def layer_boxes(editor: dict | None) -> list[Box | None]:
    """Per layer of an image editor, the bounding box of its paint as fractions of the layer's size (``None``:
    nothing painted on that layer)."""
    boxes: list[Box | None] = []
    for layer in (editor or {}).get("layers") or []:
        mask = painted(layer) if layer is not None else np.zeros((1, 1), bool)  # (H, W)
        if not mask.any():
            boxes.append(None)
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        height, width = mask.shape
        boxes.append((cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height))
    return boxes


def typed_box(text: str | None, label: str) -> Box | None:
    """Four numbers "x0, y0, x1, y1" (commas or spaces); ``None`` for empty text, an error otherwise."""
    cleaned = (text or "").replace(",", " ").split()
    if not cleaned:
        return None
    try:
        values = tuple(float(v) for v in cleaned)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise user_error(f"{label} is {text!r}: type four numbers x0, y0, x1, y1 (left, top, right, bottom).")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise user_error(
            f"{label} is {text!r}: x0 must be below x1 and y0 below y1 (left, top, right, bottom)."
        )
    return values


def phrase_regions(text: str | None, drawn: list[Box | None]) -> list[tuple[str, Box, str]]:
    """``(phrase, box, "typed" | "painted")`` per line of ``text``.

    A line is ``phrase: x0, y0, x1, y1`` (fractions of the image) or just ``phrase``, whose box is then the
    one painted on layer k for line k (``drawn``, from :func:`layer_boxes`).
    """
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise user_error(
            "Regions is empty: type one phrase of the prompt per line, with its box or a painted layer."
        )
    regions = []
    for index, line in enumerate(lines):
        phrase, colon, tail = line.rpartition(":")
        label = f"Region {index + 1}"
        if colon and any(character.isdigit() for character in tail):
            regions.append((phrase.strip(), typed_box(tail, f"{label} box"), "typed"))
        elif index < len(drawn) and drawn[index] is not None:
            regions.append((line, drawn[index], "painted"))
        else:
            raise user_error(
                f"{label} ({line!r}) has no box: add ': x0, y0, x1, y1' (fractions of the image) or paint "
                f"its box on layer {label!r}."
            )
    return regions
