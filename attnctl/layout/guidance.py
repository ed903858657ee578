"""Layout guidance by gradient: losses on each phrase's cross-attention mass and the latent update.

* Chen, Laina, Vedaldi, "Training-Free Layout Control with Cross-Attention Guidance" (WACV 2024), backward
  guidance, Eq. (3): ``E(A, B, i) = (1 - sum_{u in B} A_{u,i} / sum_u A_{u,i})^2`` summed over the phrases, and
  the update ``z_t <- z_t - eta * sigma_t^2 * grad_z E`` repeated a few times in the early steps.
* Xie et al., "BoxDiff" (ICCV 2023), Eqs. (2)-(3): the inner-box loss ``1 - mean(topk(A_i * M_i, P))`` and the
  outer-box loss ``mean(topk(A_i * (1 - M_i), P))`` per phrase.

:class:`BoxMassLoss` is the loss in the form the shared guidance machinery (:mod:`attnctl.guidance`, the one
Attend-and-Excite and SynGen use) takes: maps with gradients in, one loss per image out; :func:`layout_schedule`
turns Chen et al.'s step size ``eta * sigma_t^2`` into its :class:`~attnctl.guidance.GuidanceSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..guidance import GuidanceSchedule
from .masks import Box, region_masks


def phrase_maps(probs: torch.Tensor, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
    """(regions, queries): the cross-attention each phrase receives, summed over its tokens.

    ``probs`` is (queries, keys), already averaged over heads and layers as the caller prefers.
    """
    return torch.stack([probs[:, list(region_tokens)].sum(-1) for region_tokens in tokens])


def box_mass_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Chen et al. Eq. (3): ``sum_r (1 - sum_{q in B_r} A_r(q) / sum_q A_r(q))^2``; maps and masks (R, q)."""
    inside = (maps * masks.to(maps.dtype)).sum(-1)
    return ((1 - inside / maps.sum(-1)) ** 2).sum()


def boxdiff_loss(maps: torch.Tensor, masks: torch.Tensor, top_k: int) -> torch.Tensor:
    """BoxDiff's inner- plus outer-box constraints summed over the regions (maps and masks (R, q))."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    weight = masks.to(maps.dtype)
    inner = (maps * weight).topk(min(top_k, maps.shape[-1]), dim=-1).values.mean(-1)
    outer = (maps * (1 - weight)).topk(min(top_k, maps.shape[-1]), dim=-1).values.mean(-1)
    return (1 - inner).sum() + outer.sum()


def latent_step(latents: torch.Tensor, loss: torch.Tensor, step_size: float, sigma: float) -> torch.Tensor:
    """Chen et al.'s backward-guidance update ``z - eta * sigma^2 * grad_z loss`` (``latents`` requires grad)."""
    (gradient,) = torch.autograd.grad(loss, latents)
    return (latents - step_size * sigma**2 * gradient).detach()


class BoxMassLoss:
    """Chen et al.'s backward-guidance loss per image: maps (rows, tokens, h, w) -> losses (rows,).

    Each region's map is the cross-attention its phrase tokens receive (summed over tokens), on the grid of
    the maps; :func:`box_mass_loss` then compares its mass inside the box with its total.
    """

    def __init__(self, boxes: Sequence[Box], tokens: Sequence[Sequence[int]]) -> None:
        self.boxes, self.tokens = list(boxes), [list(t) for t in tokens]

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        masks = region_masks(self.boxes, tuple(maps.shape[-2:])).to(maps.device)  # (R, h*w)
        flat = maps.flatten(2).transpose(1, 2)  # (rows, h*w, tokens)
        return torch.stack([box_mass_loss(phrase_maps(row, self.tokens), masks) for row in flat])


def layout_schedule(step_size: float, until: float, alphas_cumprod: torch.Tensor,
                    timesteps: Sequence[float]) -> GuidanceSchedule:
    """One update ``z <- z - eta sigma_t^2 grad E`` at each of the first ``ceil(until * steps)`` loop indices,
    with ``sigma_t^2 = 1 - abar_t`` (the VP noise variance, as in Chen et al.'s Eq. 4)."""
    sizes = tuple(float(step_size * (1 - alphas_cumprod[int(t)])) for t in timesteps)
    return GuidanceSchedule(sizes, update_steps=math.ceil(until * len(sizes)))
