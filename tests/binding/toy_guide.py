"""A :class:`~attnctl.guidance.LatentGuide` over toy parts, for tests of the latent update alone: the denoiser
only records its input, whose ``view`` stands in for the attention maps, and the scheduler leaves it as it is."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from attnctl.guidance import GuidanceSchedule, LatentGuide


class ToyMaps:
    """Stands in for GradientMaps: the maps are ``view(latents)`` of the latest denoiser call."""

    recorded = True

    def __init__(self, view: Callable[[torch.Tensor], torch.Tensor]):
        self.view = view
        self.latest = None

    def record(self):
        return nullcontext()

    def completed(self):
        return None

    def maps(self):
        return self.view(self.latest)


class _IdentityScheduler:
    def scale_model_input(self, sample, timestep):
        return sample


def toy_guide(loss, schedule: GuidanceSchedule, view=lambda latents: latents) -> LatentGuide:
    """A guide whose maps are ``view`` of the latents and whose loss is ``loss(maps)``."""
    maps = ToyMaps(view)

    def denoiser(sample, timestep, **kwargs):
        maps.latest = sample

    return LatentGuide(denoiser, _IdentityScheduler(), maps, loss, schedule, {})
