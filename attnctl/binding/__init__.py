"""Attribute-binding losses on cross-attention maps: Attend-and-Excite (Chefer et al. 2023) and SynGen
(Rassin et al. 2023), run by the gradient guidance of :mod:`attnctl.guidance`."""

from .attend_excite import DEFAULT_THRESHOLDS, AttendExciteLoss
from .syngen import ModifierIndices, SynGenLoss, spatial_distributions, symmetric_kl

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AttendExciteLoss",
    "ModifierIndices",
    "SynGenLoss",
    "spatial_distributions",
    "symmetric_kl",
]
