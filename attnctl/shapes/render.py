"""Draw a :class:`~attnctl.shapes.scene.Scene` as an anti-aliased RGB image on the plain background.

Shapes are drawn at 4x resolution and box-filtered down, so edges look like a real (soft) image rather
than aliased pixel art; every shape fills a square bounding box of side ``ShapeObject.side``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUND, IMAGE_SIZE, PALETTE, Scene, ShapeObject

SUPERSAMPLE = 4
STAR_INNER_RATIO = 0.5


def shape_polygon(obj: ShapeObject, scale: float = 1.0) -> list[tuple[float, float]]:
    """Vertices of a square, upright triangle or upright five-pointed star filling ``obj``'s box."""
    cx, cy, half = obj.cx * scale, obj.cy * scale, obj.side * scale / 2
    if obj.shape == "square":
        return [
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        ]
    if obj.shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if obj.shape == "star":
        # outer radius such that the star's height (r + r cos 36deg) equals the box side
        outer = 2 * half / (1 + math.cos(math.pi / 5))
        top = cy - half
        centre_y = top + outer
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else outer * STAR_INNER_RATIO
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
        return points
    raise ValueError(f"shape={obj.shape!r}: polygons exist for square, triangle and star")


def render_scene(scene: Scene) -> Image.Image:
    """The scene as a ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB image."""
    size = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        colour = PALETTE[obj.colour]
        if obj.shape == "circle":
            cx, cy, half = (v * SUPERSAMPLE for v in (obj.cx, obj.cy, obj.side / 2))
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=colour)
        else:
            draw.polygon(shape_polygon(obj, SUPERSAMPLE), fill=colour)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Scenes as a float32 array (batch, 3, H, W) in [-1, 1], the range diffusers VAEs expect."""
    pixels = np.stack([np.asarray(render_scene(scene), dtype=np.float32) for scene in scenes])  # (B, H, W, 3)
    return pixels.transpose(0, 3, 1, 2) / 127.5 - 1.0  # (B, 3, H, W)
