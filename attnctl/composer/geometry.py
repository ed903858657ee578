"""Where the subject sits, at pixel resolution and on every attention layer's token grid.

PrimeComposer pastes a subject from a *reference canvas* (the subject centred on a black canvas the size of the
background) into a *target box* of the composite. Masks arrive at pixel resolution; each UNet layer works on a
coarser grid (the latent halved per down block, ``ceil`` for odd sizes, non-square allowed). Following the released
code (reference notes Sec. 1.6) the geometry is *recomputed* at every grid rather than downsampled: the reference box
and the target box have the same size in cells, so the m-th subject cell of the canvas (R) and of the composite (S)
are the same subject pixel, which is what row/column injection needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

Grid = tuple[int, int]


@dataclass(frozen=True)
class PixelBox:
    """An axis-aligned box in pixels, ``[x0, x1) x [y0, y1)``; coordinates may be fractional after resizing."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def scaled(self, sx: float, sy: float) -> PixelBox:
        """The same box after resizing its image by ``sx`` horizontally and ``sy`` vertically."""
        return PixelBox(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)


def check_box(box: PixelBox, image_wh: tuple[int, int], name: str) -> None:
    """Raise unless ``box`` is non-empty and lies inside an image of size ``image_wh`` (width, height)."""
    width, height = image_wh
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise ValueError(f"{name}={_fmt(box)} is empty; pass (x0, y0, x1, y1) with x0 < x1 and y0 < y1")
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise ValueError(
            f"{name}={_fmt(box)} lies outside the background image of size {width}x{height}; "
            f"keep 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
        )


def _fmt(box: PixelBox) -> str:
    return "(" + ", ".join(f"{v:g}" for v in (box.x0, box.y0, box.x1, box.y1)) + ")"


def mask_bbox(mask: np.ndarray) -> PixelBox:
    """The tight bounding box of the ``True`` pixels of a non-empty (H, W) boolean mask."""
    rows, cols = np.nonzero(mask)
    return PixelBox(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def sample_mask(mask: torch.Tensor, grid: Grid, centre: bool) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) boolean mask to ``grid`` (gh, gw), aspect handled per axis.

    ``centre=False`` samples each cell's top-left pixel, which is the released code's stride sampling
    (``mask[::8, ::8]`` then ``[::64 // s]``) whenever the sizes divide; ``centre=True`` samples the cell centre.
    """
    height, width = mask.shape
    offset = 0.5 if centre else 0.0
    rows = ((torch.arange(grid[0], dtype=torch.float64) + offset) * height / grid[0]).floor().long()
    cols = ((torch.arange(grid[1], dtype=torch.float64) + offset) * width / grid[1]).floor().long()
    return mask[rows.clamp_max(height - 1)][:, cols.clamp_max(width - 1)]


@dataclass(frozen=True)
class GridLayout:
    """The placement on one token grid: reference box, target box and matching subject cells.

    ``reference_cells[m]`` (on the canvas) and ``target_cells[m]`` (in the composite) are flat raster indices of the
    same subject cell. Boxes are ``(top, bottom, left, right)``, end-exclusive.
    """

    grid: Grid
    reference_box: tuple[int, int, int, int]
    target_box: tuple[int, int, int, int]
    reference_cells: torch.Tensor  # (M,) long
    target_cells: torch.Tensor  # (M,) long

    @property
    def num_subject_cells(self) -> int:
        return int(self.reference_cells.numel())

    def target_mask(self) -> torch.Tensor:
        """(gh, gw) bool: the subject cells S in the composite."""
        return _cells_mask(self.grid, self.target_cells)

    def reference_mask(self) -> torch.Tensor:
        """(gh, gw) bool: the subject cells R on the reference canvas."""
        return _cells_mask(self.grid, self.reference_cells)

    def box_mask(self) -> torch.Tensor:
        """(gh, gw) bool: the target box B in the composite."""
        return _box_mask(self.grid, self.target_box)

    def reference_box_mask(self) -> torch.Tensor:
        """(gh, gw) bool: the subject's box on the reference canvas."""
        return _box_mask(self.grid, self.reference_box)


def _cells_mask(grid: Grid, cells: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
    mask[cells] = True
    return mask.view(grid)


def _box_mask(grid: Grid, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = box
    mask = torch.zeros(grid, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def _axis(canvas: int, extent: float, centre_fraction: float, cells: int, clamp: bool) -> tuple[int, int, int, int]:
    """Reference span and target span of the subject along one axis of a grid with ``cells`` cells.

    Reference: the canvas-centred span ``[(canvas - extent) / 2, (canvas + extent) / 2)`` mapped to cells with
    ``int`` (the released formula). Target: the same number of cells around ``int(centre_fraction * cells)``, with
    the odd cell before the centre (``c - ceil(n / 2)``, ``c + floor(n / 2)``); with ``clamp`` a span that rounding
    pushed past the border is shifted back inside (a subject flush with the image edge stays valid).
    """
    start = int((0.5 * (canvas - extent)) / canvas * cells)
    end = int((0.5 * (canvas + extent)) / canvas * cells)
    length = end - start
    centre = int(centre_fraction * cells)
    begin = centre - (length - length // 2)
    if clamp:
        begin = min(max(begin, 0), cells - length)
    return start, end, begin, begin + length


@dataclass
class Placement:
    """The subject on the reference canvas and where its centre goes in the composite.

    Args:
        canvas_mask: (H, W) bool, the subject's segmentation on the reference canvas (centred).
        subject_hw: the subject's (height, width) in canvas pixels (its scaled image, before masking).
        centre: (row, col) of the target centre as fractions of the canvas height and width.
        centre_sampling: sample each grid cell's centre pixel (True) or top-left pixel (False, the release).
        clamp_to_grid: shift a target span that rounding pushed past the grid border back inside (paper mode);
            the release instead fails on such boxes (its slices clip or wrap), so ``False`` raises.
    """

    canvas_mask: torch.Tensor
    subject_hw: tuple[float, float]
    centre: tuple[float, float]
    centre_sampling: bool = True
    clamp_to_grid: bool = True
    _cache: dict[Grid, GridLayout] = field(default_factory=dict, repr=False)

    @property
    def canvas_hw(self) -> Grid:
        return tuple(self.canvas_mask.shape)

    def at(self, grid: Grid) -> GridLayout:
        """The layout on ``grid`` (gh, gw); raises ``ValueError`` if the target box leaves the grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._cache:
            self._cache[grid] = self._layout(grid)
        return self._cache[grid]

    def _layout(self, grid: Grid) -> GridLayout:
        (canvas_h, canvas_w), (subject_h, subject_w) = self.canvas_hw, self.subject_hw
        r_top, r_bottom, t_top, t_bottom = _axis(canvas_h, subject_h, self.centre[0], grid[0], self.clamp_to_grid)
        r_left, r_right, t_left, t_right = _axis(canvas_w, subject_w, self.centre[1], grid[1], self.clamp_to_grid)
        if t_top < 0 or t_left < 0 or t_bottom > grid[0] or t_right > grid[1]:
            raise ValueError(
                f"target_box places the subject at rows [{t_top}, {t_bottom}) and columns [{t_left}, {t_right}) of "
                f"the {grid[0]}x{grid[1]} token grid, outside the image; move the box away from the border or make "
                "it smaller"
            )
        sampled = sample_mask(self.canvas_mask, grid, self.centre_sampling)
        rows, cols = torch.nonzero(sampled[r_top:r_bottom, r_left:r_right], as_tuple=True)  # raster order
        reference = (rows + r_top) * grid[1] + (cols + r_left)
        target = (rows + t_top) * grid[1] + (cols + t_left)
        return GridLayout(grid, (r_top, r_bottom, r_left, r_right), (t_top, t_bottom, t_left, t_right), reference,
                          target)


def box_cells(box: tuple[float, float, float, float], grid: Grid) -> torch.Tensor:
    """(gh, gw) bool: the cells of ``grid`` overlapping the normalised box ``(x0, y0, x1, y1)``; never empty for a
    non-empty box, so a small region keeps at least one cell on the coarsest grid."""
    x0, y0, x1, y1 = box
    top, left = math.floor(y0 * grid[0]), math.floor(x0 * grid[1])
    bottom, right = max(top + 1, math.ceil(y1 * grid[0])), max(left + 1, math.ceil(x1 * grid[1]))
    mask = torch.zeros(grid, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def unet_grids(latent_hw: Grid, num_levels: int) -> list[Grid]:
    """The token grids of a UNet with ``num_levels`` resolutions: the latent, then halved with ``ceil`` each level."""
    grids, (height, width) = [], latent_hw
    for _ in range(num_levels):
        grids.append((height, width))
        height, width = -(-height // 2), -(-width // 2)
    return grids
