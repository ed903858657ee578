"""Per-token cross-attention maps that keep their gradients, and the map operations the losses share.

:class:`GradientMaps` is an *observe* control: while it is recording (inside a guidance forward with autograd
on) it asks for the probabilities of the cross-attention layers at one resolution only, so every other layer
stays on the fused kernel, and it keeps them in the autograd graph. Its :meth:`GradientMaps.maps` is the mean
over all heads of all recorded layers with equal weight per head (Chefer et al. 2023, Sec. 3.1;
``AE/utils/ptp_utils.py:218-234``), shaped (rows, tokens, height, width).

A diffusion transformer (PixArt-Sigma) has one token grid and no UNet resolutions to choose among:
:class:`PooledGradientMaps` reads every cross-attention layer and average-pools the mean map to the grid the
paper's rule gives for the latent (:func:`default_resolution`: 16x16 at 512 px, 32x32 at 1024 px), so one map
cell covers the same 32x32 pixels as A&E's 16x16 maps on SD at 512 px.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..core.controls import AttentionCall, AttentionControl

#: A&E's map resolution for SD at 512 px (16x16 positions); larger latents use a quarter of their size.
PAPER_RESOLUTION = 16


class StopForward(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised after the last layer a loss reads: the rest of the guidance forward cannot change the maps."""


def default_resolution(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The map grid for a latent of ``latent_hw``: (ceil(h/4), ceil(w/4)), at least 16 per side, at most the latent.

    For SD at 512 px (latent 64) this is the paper's 16x16; SD 2.x at 768 px gives 24x24 and SDXL at 1024 px
    32x32, as diffusers' ``ceil(size/32)`` rule does. Small latents (the tiny and embedded models) get their
    16x16 layers, or the latent's own grid when it is smaller.
    """
    return tuple(min(size, max(PAPER_RESOLUTION, math.ceil(size / 4))) for size in latent_hw)


class GradientMaps(AttentionControl):
    """Records cross-attention probabilities with gradients on the layers of one grid, while armed.

    Args:
        resolution: (height, width) of the layers to read, or ``None`` for :func:`default_resolution` of
            the latent the guidance forward receives.
        stop_early: raise :class:`StopForward` after the last read layer (known after the first forward), so
            a guidance forward skips the decoder layers that cannot affect the maps.
    """

    def __init__(self, resolution: tuple[int, int] | None = None, stop_early: bool = True) -> None:
        if resolution is not None:
            if len(resolution) != 2 or any(int(r) != r or r < 1 for r in resolution):
                raise ValueError(f"attn_res={resolution!r} must be two positive integers (height, width)")
            resolution = (int(resolution[0]), int(resolution[1]))
        self.resolution = resolution
        self.stop_early = stop_early
        self.recording = False
        self._probs: list[torch.Tensor] = []
        self._names: list[str] = []
        self._grids_seen: set[tuple[int, ...]] = set()
        self._last_layer: str | None = None
        self._fallback: tuple[int, int] | None = None
        self._wanted: tuple[int, int] | None = None

    def reset(self) -> None:
        self.recording, self._probs, self._names = False, [], []
        self._grids_seen, self._last_layer, self._fallback, self._wanted = set(), None, None, None

    def _target(self, call: AttentionCall) -> tuple[int, int]:
        if self.resolution is not None:
            return self.resolution
        if self._fallback is not None:
            return self._fallback
        self._wanted = default_resolution(call.run.sample_hw or call.grid)
        return self._wanted

    def applies_to(self, call: AttentionCall) -> bool:
        if not (self.recording and call.is_cross and call.grid is not None):
            return False
        self._grids_seen.add(tuple(call.grid))
        return tuple(call.grid) == self._target(call)

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    def observe(self, call: AttentionCall, probs: torch.Tensor) -> None:
        self._probs.append(probs)  # (rows, heads, h*w, text_tokens), still in the graph
        self._names.append(call.layer.name)
        self._grid = tuple(call.grid)
        if self.stop_early and call.layer.name == self._last_layer:
            raise StopForward

    @contextmanager
    def record(self):
        """Arm the control for one guidance forward; afterwards :meth:`maps` holds its maps."""
        self._probs, self._names, self.recording = [], [], True
        try:
            yield self
        finally:
            self.recording = False

    @property
    def recorded(self) -> bool:
        return bool(self._probs)

    def retarget(self) -> bool:
        """After a forward that read nothing at the default resolution: switch to the cross-attention grid seen
        closest to it in positions (larger first at a tie) and return True. SDXL's first block has no
        cross-attention, so a tiny SDXL has nothing at 16x16; an explicit ``attn_res`` is never replaced."""
        if self._probs or self.resolution is not None or self._fallback is not None or not self._grids_seen:
            return False
        wanted = math.prod(self._wanted)
        self._fallback = min(self._grids_seen, key=lambda g: (abs(math.prod(g) - wanted), -math.prod(g)))
        return True

    def completed(self) -> None:
        """Called after a forward that ran to the end: its last read layer is where later forwards stop."""
        self._last_layer = self._names[-1] if self._names else None

    def maps(self) -> torch.Tensor:
        """(rows, text_tokens, height, width): mean over every head of every read layer."""
        if not self._probs:
            raise ValueError(
                f"attn_res={self.resolution or 'default'} matches no cross-attention layer; this model's cross-attention grids are "
                f"{sorted(self._grids_seen)}: pass one of them as attn_res"
            )
        probs = torch.cat(self._probs, dim=1).float().mean(dim=1)  # (rows, h*w, text_tokens)
        return probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], *self._grid)


class PooledGradientMaps(GradientMaps):
    """:class:`GradientMaps` for a transformer with one token grid: every cross-attention layer is read and the
    mean map is average-pooled to ``resolution`` (``None``: :func:`default_resolution` of the latent, at most
    the token grid). Nothing to stop early for: the last block holds a read layer."""

    def __init__(self, resolution: tuple[int, int] | None = None) -> None:
        super().__init__(resolution, stop_early=False)
        self._latent_hw: tuple[int, int] | None = None

    def applies_to(self, call: AttentionCall) -> bool:
        if not (self.recording and call.is_cross and call.grid is not None):
            return False
        self._latent_hw = call.run.sample_hw or tuple(call.grid)
        return True

    def retarget(self) -> bool:
        return False

    def maps(self) -> torch.Tensor:
        """(rows, text_tokens, height, width): the layers' mean map, average-pooled to the target grid."""
        if not self._probs:
            raise ValueError("no cross-attention layer ran in the guidance forward; is the control installed?")
        maps = super().maps()  # (rows, text_tokens, grid_h, grid_w)
        grid = tuple(maps.shape[-2:])
        if self.resolution is None:
            target = tuple(min(d, g) for d, g in zip(default_resolution(self._latent_hw), grid))
        elif any(r > g for r, g in zip(self.resolution, grid)):
            raise ValueError(f"attn_res={self.resolution} is finer than this model's token grid {grid}; "
                             "pass at most the token grid")
        else:
            target = self.resolution
        return F.adaptive_avg_pool2d(maps, target)


def token_softmax(maps: torch.Tensor, first: int = 1, temperature: float = 100.0, end: int = -1) -> torch.Tensor:
    """Renormalise each pixel over the text tokens ``first .. end`` (exclusive; Chefer et al. 2023, Eq. 1-2).

    maps (rows, tokens, h, w) -> (rows, tokens, h, w) where columns outside ``first:end`` are zero and the
    rest are ``softmax(temperature * maps[:, first:end])`` over the token axis. The defaults are the release's
    for CLIP: ``first=1`` drops the start token, whose probability dwarfs the others, and ``end=-1`` the last
    column (``AE/pipeline_attend_and_excite.py:199-207``). Token indices keep their meaning (no column shift).
    """
    out = torch.zeros_like(maps)
    out[:, first:end] = (maps[:, first:end] * temperature).softmax(dim=1)
    return out


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """(size, size) kernel of the release: w(d) ~ exp(-(d / (2 sigma))^2), outer product, summing to 1.

    The release's formula squares d/(2 sigma), so it is a true Gaussian of standard deviation sigma*sqrt(2)
    (0.707 for the default 0.5; ``AE/utils/gaussian_smoothing.py:37-43``).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size={size} must be a positive odd integer")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be positive")
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    axis = torch.exp(-((offsets / (2 * sigma)) ** 2))
    kernel = torch.outer(axis, axis)
    return (kernel / kernel.sum()).float()


def smooth(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by half the kernel and convolve each map: (..., h, w) -> (..., h, w)."""
    shape = maps.shape
    flat = maps.reshape(-1, 1, *shape[-2:])
    pad = kernel.shape[-1] // 2
    padded = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel.to(maps)[None, None]).reshape(shape)
