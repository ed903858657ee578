"""Gradient guidance of the latents by losses on cross-attention maps (Attend-and-Excite, SynGen, layout).

* :class:`GradientMaps`: per-token cross-attention maps with gradients, read only on the layers of one grid;
* :func:`token_softmax`, :func:`gaussian_kernel`, :func:`smooth`: the map operations losses share;
* :class:`GuidanceSchedule` and :class:`LatentGuide`: z <- z - alpha_i grad L with iterative refinement;
* :func:`guided_call`: runs a diffusers pipeline's own ``__call__`` with the latents guided.
"""

from .maps import GradientMaps, StopForward, default_resolution, gaussian_kernel, smooth, token_softmax
from .pipeline import guided_call
from .update import GuidanceSchedule, LatentGuide, MapLoss, decaying_step_sizes

__all__ = [
    "GradientMaps",
    "GuidanceSchedule",
    "LatentGuide",
    "MapLoss",
    "StopForward",
    "decaying_step_sizes",
    "default_resolution",
    "gaussian_kernel",
    "guided_call",
    "smooth",
    "token_softmax",
]

