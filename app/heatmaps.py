"""Per-token cross-attention heat maps drawn over the generated image, one gallery item per token."""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from attnctl.core import TokenHeatmaps

# Colour ramp from low to high attention (dark purple, magenta, orange, pale yellow), evenly spaced stops.
HEAT_STOPS = np.array([[20, 11, 52], [132, 32, 107], [229, 92, 48], [252, 255, 164]], dtype=np.float32)
OVERLAY_STRENGTH = 0.6  # share of the heat colour in each pixel; the rest is the image


def unique_labels(tokens: list[str]) -> list[str]:
    """Captions for ``tokens``: a repeated token gets its occurrence number (``a``, ``a (2)``)."""
    seen: Counter[str] = Counter()
    labels = []
    for token in tokens:
        seen[token] += 1
        labels.append(token if seen[token] == 1 else f"{token} ({seen[token]})")
    return labels


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) float RGB in [0, 255], linear between the ``HEAT_STOPS``."""
    position = np.clip(values, 0.0, 1.0) * (len(HEAT_STOPS) - 1)  # (H, W) in [0, stops - 1]
    low = np.minimum(position.astype(np.int64), len(HEAT_STOPS) - 2)  # (H, W) index of the stop below
    fraction = (position - low)[..., None]  # (H, W, 1)
    return HEAT_STOPS[low] * (1.0 - fraction) + HEAT_STOPS[low + 1] * fraction


def overlay(image: Image.Image, values: np.ndarray, strength: float = OVERLAY_STRENGTH) -> Image.Image:
    """``image`` blended with the heat colours of ``values`` ((H, W) in [0, 1], the image's size)."""
    if values.shape != (image.height, image.width):
        raise ValueError(f"heat map is {values.shape} but the image is {(image.height, image.width)}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    blended = (1.0 - strength) * pixels + strength * heat_colours(values)
    return Image.fromarray(np.round(blended).astype(np.uint8))


def token_overlays(image: Image.Image, heatmaps: TokenHeatmaps) -> list[tuple[Image.Image, str]]:
    """Gallery items ``(overlay, token)``, one per prompt token, each map scaled to [0, 1] on its own."""
    maps = heatmaps.normalized().float().cpu().numpy()  # (tokens, H, W)
    return [(overlay(image, values), label) for values, label in zip(maps, unique_labels(heatmaps.tokens))]
