"""Progressively combined sampling (PrimeComposer Sec. 3.1; reference notes Sec. 3.1 and 5): the loop itself.

The generator only synthesises the target box; after each step its latent is recombined with the inverted
background trajectory. The loop is model-agnostic: a :class:`CompositionModel` supplies the correlation pass and the
guided data prediction, so the pipeline plugs in its UNet and tests plug in toy functions.

Latents are (batch, channels, height, width); cell indices are flat raster indices on the latent grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import ComposerConfig, Phases
from .geometry import GridLayout
from .solver import DiscreteVPSchedule, dpm_update, update_order

# on_step(index, t, latents, background_latents) -> latents: called after each step's blend (callbacks, progress)
StepHook = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor]


class CompositionModel(Protocol):
    """What the loop needs from the denoiser."""

    def correlate(self, reference: torch.Tensor, composite: torch.Tensor | None, t: float) -> None:
        """Run the correlation pass at time ``t`` (recording its logits); ``composite`` is ``None`` in the release."""

    def predict(self, latents: torch.Tensor, t: float, inject: bool) -> torch.Tensor:
        """The guided data prediction ``x0_hat`` of the generator at time ``t``, injecting if ``inject``."""


@dataclass
class Trajectories:
    """Inverted latents in decode order: entry ``k`` is the latent at the grid time ``t_k``."""

    background: list[torch.Tensor]
    reference: list[torch.Tensor]


def paste_cells(base: torch.Tensor, source: torch.Tensor, source_cells: torch.Tensor, base_cells: torch.Tensor):
    """``base`` with ``base[..., base_cells] = source[..., source_cells]`` on flattened latents (a new tensor)."""
    out = base.clone()
    out.flatten(2)[..., base_cells] = source.flatten(2)[..., source_cells]  # (batch, channels, h * w) view
    return out


def keep_box(latents: torch.Tensor, background: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The latent inside ``box`` (h, w), the background outside: bit-exact background outside the box."""
    return torch.where(box.to(latents.device), latents, background)


def initial_latents(trajectories: Trajectories, layout: GridLayout, domain: str, noise: torch.Tensor) -> torch.Tensor:
    """``z_T`` (Sec. 3.1): the inverted background, fresh ``noise`` (full latent size) in the box outside the subject,
    and on the subject cells the inverted background ("same", which holds the pixel-pasted subject) or the inverted
    subject ("cross")."""
    background = trajectories.background[0]
    fresh = torch.where(layout.box_mask().to(background.device), noise, background)
    if domain == "same":
        return paste_cells(fresh, background, layout.target_cells, layout.target_cells)
    return paste_cells(fresh, trajectories.reference[0], layout.reference_cells, layout.target_cells)


def _blend(latents, j, phases: Phases, layout: GridLayout, trajectories: Trajectories) -> torch.Tensor:
    """The progressive combination after producing the latent at ``t_j``."""
    background = trajectories.background[j]
    if j in phases.repaste:
        return paste_cells(background, trajectories.reference[j], layout.reference_cells, layout.target_cells)
    if j in phases.keep_background:
        return keep_box(latents, background, layout.box_mask())
    return latents


def compose(
    model: CompositionModel,
    schedule: DiscreteVPSchedule,
    config: ComposerConfig,
    phases: Phases,
    layout: GridLayout,
    trajectories: Trajectories,
    latents: torch.Tensor,
    on_step: StepHook | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Sample the composite from ``latents`` (``z_T``) with the paper's loop or, if ``config.faithful``, the release's."""
    run = _compose_release if config.faithful else _compose_paper
    hook = on_step or (lambda index, t, z, background: z)
    return run(model, schedule, config.solver_order, phases, layout, trajectories, latents, hook,
               stop or (lambda: False))


def _compose_paper(model, schedule, order, phases, layout, traj, z, on_step, stop):
    """Paper order per step k: refresh the subject stream from the current latent, correlate, predict (injecting),
    update, blend; the next prediction sees the blended latent."""
    times = schedule.grid(len(traj.background) - 1)
    steps, data = len(times) - 1, []
    for k in range(steps):
        if stop():
            break
        inject = k in phases.inject
        if inject:
            reference = paste_cells(traj.reference[k], z, layout.target_cells, layout.reference_cells)
            composite = paste_cells(traj.background[k], z, layout.target_cells, layout.target_cells)
            model.correlate(reference, composite, times[k])
        data.append(model.predict(z, times[k], inject))
        z = dpm_update(schedule, z, times[k + 1], times[: k + 1], data, update_order(k + 1, steps, order))
        z = on_step(k, times[k + 1], _blend(z, k + 1, phases, layout, traj), traj.background[k + 1])
    return z


def _compose_release(model, schedule, order, phases, layout, traj, z, on_step, stop):
    """The released sampler.py, quirks kept (reference notes Sec. 3-5 and 8):

    * warm-up evaluations ``k < order`` always inject, with the logits of one correlation call on ``ref[0]`` at
      ``t_{order-1}`` (the store keeps only the last warm-up call); their data predictions are then overwritten with
      ``bg[k]`` outside the box, and the warm-up latents are not blended;
    * at step ``j`` the subject stream is refreshed from the *previous* latent ``z_{j-1}`` and the refresh persists
      in the reference trajectory, so a re-paste puts back the generator's own subject;
    * the generator predicts on the *unblended* latent, the blend comes after.
    """
    reference = list(traj.reference)
    times = schedule.grid(len(traj.background) - 1)
    steps, data = len(times) - 1, []
    model.correlate(reference[0], None, times[order - 1])
    for k in range(order):
        if k:
            z = dpm_update(schedule, z, times[k], times[:k], data, update_order(k, steps, order))
            z = on_step(k - 1, times[k], z, traj.background[k])
        data.append(model.predict(z, times[k], k in phases.inject))
    box = layout.box_mask()
    data = [keep_box(x0, traj.background[k], box) for k, x0 in enumerate(data)]
    for j in range(order, steps + 1):
        if stop():
            break
        inject = j in phases.inject
        if inject:
            reference[j] = paste_cells(reference[j], z, layout.target_cells, layout.reference_cells)
            model.correlate(reference[j], None, times[j])
        z = dpm_update(schedule, z, times[j], times[:j], data, update_order(j, steps, order))
        if j < steps:
            data.append(model.predict(z, times[j], inject))
        z = on_step(j - 1, times[j], _blend(z, j, phases, layout, Trajectories(traj.background, reference)),
                    traj.background[j])
    return z
