"""A LatentGuide without a model: the "denoiser" hands its input to a map source that turns it into maps."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from attnctl.guidance import GuidanceSchedule, LatentGuide, MapLoss


class ToyMaps:
    """Stands in for GradientMaps: maps = ``transform(denoiser input)``, differentiable in the latents."""

    recorded = True

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.transform, self.latest = transform, None

    def record(self):
        return nullcontext()

    def completed(self):
        return None

    def maps(self):
        return self.transform(self.latest)


class Identity:
    """A scheduler whose ``scale_model_input`` changes nothing (as DDIM's)."""

    def scale_model_input(self, sample, timestep):
        return sample


def toy_guide(loss: MapLoss, schedule: GuidanceSchedule, transform=lambda x: x) -> LatentGuide:
    maps = ToyMaps(transform)

    def denoiser(sample, timestep, **kwargs):
        maps.latest = sample

    return LatentGuide(denoiser, Identity(), maps, loss, schedule, {})
