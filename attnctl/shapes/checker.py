"""Read back which coloured shapes an image shows, with classical image processing (no learned model).

Pixels are labelled by the nearest palette hue in CIELAB (only chromatic pixels: the background is grey).
Each connected chromatic blob above a minimum area is one object in its majority colour, unless it holds
a second large region of a clearly different hue (two touching objects), which is then split off. Each
object's colour is the palette colour nearest (CIELAB distance) to the median of its interior pixels, so
lightness separates neighbouring hues (orange from yellow) and soft edges do not count. Its shape is classified from two scale-free measures: solidity (area / convex-hull area; a star's is about 0.6, the others'
about 1) and fill (area / bounding-box area: square 1, circle pi/4, triangle 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .scene import PALETTE

MIN_CHROMA = 30.0
MIN_AREA = 30
SPLIT_SHARE = 0.25  # a second colour must cover this share of a blob to split it ...
SPLIT_MIN_HUE_GAP = np.radians(50)  # ... and differ by this much in hue (neighbouring palette hues drift)
STAR_MAX_SOLIDITY = 0.84  # renders: stars <= 0.72, triangles >= 0.89; decoded stars reach ~0.8
SQUARE_MIN_FILL = 0.88
CIRCLE_MIN_FILL = 0.65


@dataclass(frozen=True)
class Detection:
    """One coloured blob: palette colour, shape class, centre (x, y) in pixels and area in pixels."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in [0, 255], any leading shape; the last axis holds R, G, B."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


def _hue(lab: np.ndarray) -> np.ndarray:
    """Hue angle in radians of CIELAB values (last axis L, a, b)."""
    return np.arctan2(lab[..., 2], lab[..., 1])


PALETTE_NAMES = tuple(PALETTE)
PALETTE_LAB = srgb_to_lab(np.array([PALETTE[name] for name in PALETTE_NAMES]))  # (colours, 3)
PALETTE_HUES = _hue(PALETTE_LAB)


def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index by nearest hue, or -1 for achromatic pixels (background, greys)."""
    lab = srgb_to_lab(image[..., :3])  # (H, W, 3)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    difference = np.angle(np.exp(1j * (_hue(lab)[..., None] - PALETTE_HUES)))  # (H, W, colours), wrapped
    labels = np.abs(difference).argmin(axis=-1)
    return np.where(chroma >= MIN_CHROMA, labels, -1)


def region_colour(lab: np.ndarray, mask: np.ndarray) -> int:
    """Palette index nearest in CIELAB to the median colour of the mask's interior (all of it if thin)."""
    interior = ndimage.binary_erosion(mask)
    median = np.median(lab[interior if interior.any() else mask], axis=0)  # (3,)
    return int(np.linalg.norm(PALETTE_LAB - median, axis=1).argmin())


def _hue_gap(first: int, second: int) -> float:
    """Absolute hue difference in radians between two palette colours (wrapped to [0, pi])."""
    return float(abs(np.angle(np.exp(1j * (PALETTE_HUES[first] - PALETTE_HUES[second])))))


def colour_regions(blob: np.ndarray, labels: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """Split one chromatic blob into (palette index, mask) objects: its majority colour, plus every other
    colour covering ``SPLIT_SHARE`` of it with a hue ``SPLIT_MIN_HUE_GAP`` away from those kept."""
    counts = np.bincount(labels[blob], minlength=len(PALETTE_NAMES))
    area = int(blob.sum())
    kept = [int(counts.argmax())]
    for colour in np.argsort(-counts)[1:]:
        large = counts[colour] >= max(min_area, SPLIT_SHARE * area)
        if large and all(_hue_gap(int(colour), other) >= SPLIT_MIN_HUE_GAP for other in kept):
            kept.append(int(colour))
    if len(kept) == 1:
        return [(kept[0], blob)]
    # every blob pixel goes to the kept colour nearest in hue, then each part splits into its pieces
    gaps = np.stack(
        [[_hue_gap(int(label), colour) for colour in kept] for label in range(len(PALETTE_NAMES))]
    )
    owner = gaps.argmin(axis=1)[np.where(blob, labels, 0)]  # (H, W) index into kept
    regions = []
    for position, colour in enumerate(kept):
        pieces, count = ndimage.label(blob & (owner == position), structure=np.ones((3, 3)))
        regions += [(colour, pieces == piece) for piece in range(1, count + 1)]
    return regions


def _convex_hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixels, each pixel a unit square (hull of its corners)."""
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        return float(ConvexHull(corners).volume)
    except QhullError:
        return float(mask.sum())


def shape_measures(mask: np.ndarray) -> tuple[float, float]:
    """(solidity, fill) of one blob given as a boolean mask cropped or not."""
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    box = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return area / _convex_hull_area(mask), area / box


def classify_shape(mask: np.ndarray) -> str:
    """Circle, square, triangle or star from solidity and fill (thresholds between measured clusters)."""
    solidity, fill = shape_measures(mask)
    if solidity < STAR_MAX_SOLIDITY:
        return "star"
    if fill >= SQUARE_MIN_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_MIN_FILL else "triangle"


def detect_shapes(image, min_area: int = MIN_AREA) -> list[Detection]:
    """All coloured shapes in an RGB image (PIL image or (H, W, 3) uint8 array), largest first."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        raise ValueError(f"image shape {pixels.shape}: need an RGB image of shape (H, W, 3)")
    labels = colour_labels(pixels)
    lab = srgb_to_lab(pixels[..., :3])  # (H, W, 3)
    blobs, count = ndimage.label(labels >= 0, structure=np.ones((3, 3)))
    detections = []
    for blob in range(1, count + 1):
        blob_mask = blobs == blob
        if blob_mask.sum() < min_area:
            continue
        for _, region in colour_regions(blob_mask, labels, min_area):
            mask = ndimage.binary_fill_holes(region)
            area = int(mask.sum())
            if area < min_area:
                continue
            cy, cx = ndimage.center_of_mass(mask)
            detections.append(
                Detection(
                    PALETTE_NAMES[region_colour(lab, region)],
                    classify_shape(mask),
                    float(cx),
                    float(cy),
                    area,
                )
            )
    return sorted(detections, key=lambda d: -d.area)


def has_object(detections: list[Detection], colour: str, shape: str) -> bool:
    """Whether some detection is a ``colour`` ``shape``."""
    return any(d.colour == colour and d.shape == shape for d in detections)
