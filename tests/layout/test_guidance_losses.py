"""Layout-guidance losses (Chen et al. 2024, BoxDiff) and one latent update against literal computations."""

from __future__ import annotations

import pytest
import torch

from attnctl.layout import (
    BoxMassLoss,
    box_mass_loss,
    boxdiff_loss,
    latent_step,
    layout_schedule,
    phrase_maps,
    region_masks,
)

BOXES = [(0.0, 0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 1.0)]
TOKENS = [[1, 2], [3]]


def _maps(latents: torch.Tensor) -> torch.Tensor:
    """A differentiable stand-in for the denoiser's cross-attention: (queries, keys) softmax rows."""
    weights = torch.linspace(-1, 1, 8 * 5, dtype=latents.dtype).view(8, 5)
    return (latents[:, None] * weights).softmax(-1)


def test_phrase_maps_and_box_mass_loss_match_the_literal_sums():
    probs = _maps(torch.linspace(0.5, 2.0, 8, dtype=torch.float64))
    masks = region_masks(BOXES, (2, 4))
    maps = phrase_maps(probs, TOKENS)
    literal = 0.0
    for r, tokens in enumerate(TOKENS):
        per_query = [sum(float(probs[q, j]) for j in tokens) for q in range(8)]
        assert maps[r].tolist() == pytest.approx(per_query)
        inside = sum(a for q, a in enumerate(per_query) if masks[r, q])
        literal += (1 - inside / sum(per_query)) ** 2
    assert float(box_mass_loss(maps, masks)) == pytest.approx(literal)


def test_boxdiff_loss_matches_the_literal_top_k_means():
    maps = torch.rand(2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = region_masks(BOXES, (2, 4))
    literal = 0.0
    for r in range(2):
        inner = sorted((float(maps[r, q]) if masks[r, q] else 0.0 for q in range(8)), reverse=True)[:3]
        outer = sorted((0.0 if masks[r, q] else float(maps[r, q]) for q in range(8)), reverse=True)[:3]
        literal += (1 - sum(inner) / 3) + sum(outer) / 3
    assert float(boxdiff_loss(maps, masks, top_k=3)) == pytest.approx(literal)
    with pytest.raises(ValueError, match="top_k=0"):
        boxdiff_loss(maps, masks, top_k=0)


def test_one_latent_update_equals_a_finite_difference_step():
    masks = region_masks(BOXES, (2, 4))
    start = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return box_mass_loss(phrase_maps(_maps(z), TOKENS), masks)

    latents = start.clone().requires_grad_(True)
    updated = latent_step(latents, loss(latents), step_size=0.3, sigma=2.0)
    eps = 1e-6
    gradient = torch.stack([(loss(start + eps * e) - loss(start - eps * e)) / (2 * eps) for e in torch.eye(8)])
    torch.testing.assert_close(updated, start - 0.3 * 4.0 * gradient, rtol=1e-6, atol=1e-8)
    assert float(loss(updated)) < float(loss(start))  # a small step lowers the loss


def test_box_mass_loss_per_image_matches_the_literal_loss_of_each_row():
    maps = torch.rand(3, 5, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = BoxMassLoss(BOXES, TOKENS)(maps)  # (rows,)
    masks = region_masks(BOXES, (2, 4))
    for row in range(3):
        literal = 0.0
        for r, tokens in enumerate(TOKENS):
            per_query = [sum(float(maps[row, j].flatten()[q]) for j in tokens) for q in range(8)]
            inside = sum(a for q, a in enumerate(per_query) if masks[r, q])
            literal += (1 - inside / sum(per_query)) ** 2
        assert float(losses[row]) == pytest.approx(literal)


def test_layout_schedule_is_eta_times_the_noise_variance_on_the_first_steps():
    alphas = torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)
    schedule = layout_schedule(5.0, 0.25, alphas, [999, 750, 500, 250, 0])
    assert schedule.step_sizes == pytest.approx([5.0 * (1 - float(alphas[t])) for t in (999, 750, 500, 250, 0)])
    assert schedule.update_steps == 2 and [schedule.acts_at(i) for i in range(5)] == [True, True, False, False, False]

