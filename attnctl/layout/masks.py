"""Boxes on token grids, and the keep-mask that drops the end-of-text and padding keys.

Every layout mode works on the same two ingredients: for each region, the query cells of a layer's token grid
that overlap its box (``(regions, queries)`` bool, raster order as the attention queries are laid out), and the
key positions of the text encoder's sequence that a mode biases, masks or replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..composer import box_cells
from ..composer.geometry import Grid

Box = tuple[float, float, float, float]


def region_masks(boxes: Sequence[Box], grid: Grid) -> torch.Tensor:
    """(regions, gh * gw) bool: the cells of ``grid`` overlapping each normalised box ``(x0, y0, x1, y1)``."""
    return torch.stack([box_cells(box, tuple(grid)).reshape(-1) for box in boxes])


def special_keep_mask(masks: torch.Tensor, special: Sequence[int], key_len: int, where: str) -> torch.Tensor | None:
    """(queries, keys) keep-mask that drops the ``special`` keys (end and padding) from some queries.

    ``where="boxes"``: queries inside any box lose them, so inside a box a phrase is read from the prompt's own
    tokens only; ``"all"``: every query loses them. ``None`` when nothing is dropped.
    """
    special = [j for j in special if j < key_len]
    if where == "off" or not special:
        return None
    rows = masks.any(0) if where == "boxes" else torch.ones(masks.shape[1], dtype=torch.bool)  # (q,)
    keep = torch.ones(masks.shape[1], key_len, dtype=torch.bool)
    keep[:, special] = ~rows[:, None]
    return keep
