"""Gradient guidance of the latents by losses on cross-attention maps (Attend-and-Excite, SynGen, layout).

* :class:`GradientMaps`: per-token cross-attention maps with gradients, read only on the layers of one grid
  (:class:`PooledGradientMaps`: a transformer's one token grid, pooled to the paper's scale);
* :func:`token_softmax`, :func:`gaussian_kernel`, :func:`smooth`: the map operations losses share;
* :class:`GuidanceSchedule` and :class:`LatentGuide`: z <- z - alpha_i grad L with iterative refinement;
* :func:`guidance_arguments`: the ``latents`` and step-end callback that guide a diffusers pipeline's own call.
"""

from .maps import (
    GradientMaps,
    PooledGradientMaps,
    StopForward,
    default_resolution,
    gaussian_kernel,
    smooth,
    token_softmax,
)
from .pipeline import guidance_arguments
from .update import GuidanceSchedule, LatentGuide, MapLoss, decaying_step_sizes

__all__ = [
    "GradientMaps",
    "GuidanceSchedule",
    "LatentGuide",
    "MapLoss",
    "PooledGradientMaps",
    "StopForward",
    "decaying_step_sizes",
    "default_resolution",
    "gaussian_kernel",
    "guidance_arguments",
    "smooth",
    "token_softmax",
]

