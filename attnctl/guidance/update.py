"""Latent updates by gradient: z <- z - alpha_i * grad_z L, with iterative refinement (Chefer et al. 2023).

A loss is a plain function of the maps: ``loss(maps) -> losses`` with maps (rows, text_tokens, h, w) from
:class:`~attnctl.guidance.maps.GradientMaps` and one loss per row. Rows are independent images, so one backward
pass of the summed losses gives every row its own gradient. Attend-and-Excite, SynGen and layout guidance each
supply a loss and a :class:`GuidanceSchedule`; :class:`LatentGuide` does the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .maps import GradientMaps, StopForward

MapLoss = Callable[[torch.Tensor], torch.Tensor]  # maps (rows, tokens, h, w) -> losses (rows,)


def decaying_step_sizes(num_timesteps: int, scale_factor: float, scale_range: tuple[float, float] = (1.0, 0.5)):
    """alpha_i = scale_factor * sqrt(r_i), r = linspace(scale_range, num_timesteps) (Chefer et al. 2023, Eq. 3;
    ``AE/pipeline_attend_and_excite.py:500``): the square root of a linear decay over the loop indices."""
    ratios = torch.linspace(scale_range[0], scale_range[1], num_timesteps, dtype=torch.float64)
    return tuple(float(scale_factor * math.sqrt(r)) for r in ratios)


@dataclass(frozen=True)
class GuidanceSchedule:
    """When and how far the latents move, by loop index over ``scheduler.timesteps``.

    Args:
        step_sizes: alpha per loop index.
        update_steps: loop indices ``< update_steps`` get one regular update.
        targets: loop index -> loss target; there the latents are refined (updated and re-measured) until
            every row's loss is at most the target, at most ``max_refinement_steps`` times.
        max_refinement_steps: the cap of one refinement (20 in the paper).
    """

    step_sizes: tuple[float, ...]
    update_steps: int = 0
    targets: Mapping[int, float] = field(default_factory=dict)
    max_refinement_steps: int = 20

    def __post_init__(self) -> None:
        if self.update_steps < 0:
            raise ValueError(f"update_steps={self.update_steps} must be >= 0")
        if self.max_refinement_steps < 0:
            raise ValueError(f"max_refinement_steps={self.max_refinement_steps} must be >= 0")

    def acts_at(self, index: int) -> bool:
        return index < min(self.update_steps, len(self.step_sizes)) or index in self.targets

    @property
    def off(self) -> bool:
        """True when no loop index is ever updated (then a pipeline runs its stock call)."""
        return all(s == 0 for s in self.step_sizes) or not any(map(self.acts_at, range(len(self.step_sizes))))


class LatentGuide:
    """Moves the latents of one pipeline call along -grad L at the steps a :class:`GuidanceSchedule` picks.

    Each measurement is one extra denoiser forward on the latents alone (the conditional rows, batch as in
    the call, no classifier-free-guidance pair) with autograd on; its prediction is discarded. ``conditioning``
    holds the keyword arguments of that forward (``encoder_hidden_states`` and, for SDXL,
    ``added_cond_kwargs``). ``history`` records, per measurement, the loop index, the refinement iteration,
    the losses and the gradient's RMS per row (for diagnosis).
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        scheduler: Any,
        maps: GradientMaps,
        loss: MapLoss,
        schedule: GuidanceSchedule,
        conditioning: dict[str, Any],
    ) -> None:
        self.denoiser, self.scheduler, self.maps = denoiser, scheduler, maps
        self.loss, self.schedule, self.conditioning = loss, schedule, conditioning
        self.history: list[dict[str, Any]] = []

    def measure(self, latents: torch.Tensor, timestep: torch.Tensor, index: int, iteration: int = 0):
        """(losses (rows,), grad_z sum(losses)) at ``latents``; the gradient is zero where a loss is constant."""
        z = latents.detach().requires_grad_(True)
        with torch.enable_grad():
            self._forward(z, timestep)
            if not self.maps.recorded and self.maps.retarget():
                self._forward(z, timestep)
            losses = self.loss(self.maps.maps())
            if losses.shape != (latents.shape[0],):
                raise ValueError(f"a guidance loss returned shape {tuple(losses.shape)}; expected one per row")
            grad = torch.autograd.grad(losses.sum(), z)[0] if losses.requires_grad else torch.zeros_like(z)
        rms = grad.detach().float().pow(2).flatten(1).mean(1).sqrt()
        self.history.append(
            {"index": index, "iteration": iteration, "loss": losses.detach().tolist(), "grad_rms": rms.tolist()}
        )
        return losses.detach(), grad

    def _forward(self, z: torch.Tensor, timestep: torch.Tensor) -> None:
        """One denoiser forward that leaves the maps of ``z`` in ``self.maps`` (stopped after the last read layer)."""
        with self.maps.record():
            try:
                self.denoiser(self.scheduler.scale_model_input(z, timestep), timestep, **self.conditioning)
                self.maps.completed()
            except StopForward:
                pass

    def __call__(self, latents: torch.Tensor, index: int, timestep: torch.Tensor) -> torch.Tensor:
        """The latents to denoise at loop index ``index`` (unchanged where the schedule does not act).

        Refinement (Chefer et al. 2023, Sec. 3.3): while some row's loss exceeds the target, update the rows
        above it and measure again. Unlike the release it does not re-measure unchanged latents first and
        stops at the first measurement that meets the target (spec quirk 4). The regular update follows.
        """
        if not self.schedule.acts_at(index):
            return latents
        alpha = self.schedule.step_sizes[index]
        losses, grad = self.measure(latents, timestep, index)
        target = self.schedule.targets.get(index)
        if target is not None:
            for iteration in range(1, self.schedule.max_refinement_steps + 1):
                above = losses > target  # (rows,)
                if not above.any():
                    break
                latents = latents - alpha * grad * above.to(grad.dtype).view(-1, *[1] * (grad.ndim - 1))
                losses, grad = self.measure(latents, timestep, index, iteration)
        if index < self.schedule.update_steps:
            latents = latents - alpha * grad
        return latents
