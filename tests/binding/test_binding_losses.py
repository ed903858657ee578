"""Attend-and-Excite's and SynGen's losses, and one latent update by each, against literal computations."""

from __future__ import annotations

import math

import pytest
import torch
from toy_guide import toy_guide

from attnctl.binding import AttendExciteLoss, ModifierIndices, SynGenLoss, spatial_distributions, symmetric_kl
from attnctl.guidance import GuidanceSchedule, gaussian_kernel


def _literal_excite(maps_row: torch.Tensor, subjects, first: int = 1, end: int = -1) -> float:
    """Eq. 4 of Chefer et al. by loops: softmax(100 A[first:end]) per pixel (the release: [1:-1]), reflect pad,
    3x3 kernel, max, 1 - min."""
    tokens, height, width = maps_row.shape
    kernel = gaussian_kernel(3, 0.5)
    peaks = []
    for subject in subjects:
        subject_map = torch.zeros(height, width)
        for y in range(height):
            for x in range(width):
                column = maps_row[first:end, y, x] * 100
                weights = torch.exp(column - column.max()) / torch.exp(column - column.max()).sum()
                subject_map[y, x] = sum(weights[i - first] for i in subject)
        padded = torch.nn.functional.pad(subject_map[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
        smoothed = [[(padded[y : y + 3, x : x + 3] * kernel).sum() for x in range(width)] for y in range(height)]
        peaks.append(max(max(row) for row in smoothed).item())
    return max(max(0.0, 1 - peak) for peak in peaks)


def test_attend_excite_loss_matches_the_literal_equation():
    torch.manual_seed(0)
    maps = torch.rand(2, 7, 4, 5) / 50
    subjects = [[(2,), (4,)], [(1, 2), (5,)]]  # row 1: a two-token word
    losses = AttendExciteLoss(subjects)(maps)
    for row in range(2):
        assert losses[row].item() == pytest.approx(_literal_excite(maps[row], subjects[row]), rel=1e-5)


def test_attend_excite_loss_over_t5_keys_matches_the_literal_equation():
    """T5 (PixArt): no start token, masked padding: each row renormalises over its own [0, prompt + </s>) keys."""
    torch.manual_seed(4)
    maps = torch.rand(2, 9, 4, 5) / 50
    maps[:, 6:] = 0  # padding keys behind row 1's </s> hold no attention
    subjects, keys = [[(0,), (4,)], [(2, 3)]], [(0, 8), (0, 6)]
    losses = AttendExciteLoss(subjects, keys=keys)(maps)
    for row in range(2):
        literal = _literal_excite(maps[row], subjects[row], *keys[row])
        assert losses[row].item() == pytest.approx(literal, rel=1e-5)
    assert losses[1].item() != pytest.approx(AttendExciteLoss(subjects)(maps)[1].item(), rel=1e-3)


def test_attend_excite_loss_is_one_minus_the_weakest_peak_and_zero_without_subjects():
    torch.manual_seed(1)
    maps = (torch.rand(1, 6, 4, 4) / 50).requires_grad_(True)
    loss_fn = AttendExciteLoss([[(2,), (3,)]])
    peaks = loss_fn.subject_peaks(maps, 0)
    assert 0 <= loss_fn(maps).item() < 1
    assert loss_fn(maps).item() == pytest.approx(1 - peaks.min().item())
    # only the weakest subject's peak carries gradient (the outer max of Eq. 4)
    peak_grad = torch.autograd.grad((1 - peaks).clamp_min(0).max(), peaks)[0]
    assert (peak_grad != 0).sum() == 1 and peak_grad[peaks.argmin()] == -1
    assert AttendExciteLoss([[]])(maps).item() == 0.0 and not AttendExciteLoss([[]])(maps).requires_grad


def test_symmetric_kl_properties():
    torch.manual_seed(2)
    a, b = torch.rand(3, 3) + 0.01, torch.rand(3, 3) + 0.01
    (p, log_p), (q, log_q) = (spatial_distributions(x[None]) for x in (a, b))
    p100, log_p100 = spatial_distributions(100 * a[None])
    d = symmetric_kl(p, log_p, q, log_q)
    assert symmetric_kl(p, log_p, p, log_p).item() == 0.0
    assert d.item() == pytest.approx(symmetric_kl(q, log_q, p, log_p).item()) and d.item() > 0
    assert d.item() == pytest.approx(symmetric_kl(p100, log_p100, q, log_q).item(), rel=1e-5)  # x100 cancels
    pa, pb = (a / a.sum()).flatten(), (b / b.sum()).flatten()
    kl = lambda x, y: sum(float(x[i] * math.log(x[i] / y[i])) for i in range(9))  # noqa: E731
    assert d.item() == pytest.approx(0.5 * (kl(pa, pb) + kl(pb, pa)), rel=1e-5)


def test_a_map_without_attention_keeps_the_gradient_finite():
    """T5's masked padding keys have all-zero maps: no 0/0 whose NaN would reach the other maps' gradients."""
    maps = torch.rand(4, 3, 3).requires_grad_(True)
    with torch.no_grad():
        maps[3] = 0
    probs, _ = spatial_distributions(maps)
    assert torch.equal(probs[3], torch.zeros(9))
    loss = SynGenLoss([[ModifierIndices((1,), ((0,),), (2,))]])(maps[None])
    assert torch.isfinite(torch.autograd.grad(loss.sum(), maps)[0]).all()


def _dist(maps, i, j):
    p, log_p = spatial_distributions(maps)
    return symmetric_kl(p[i], log_p[i], p[j], log_p[j])


def test_syngen_loss_of_one_pair_and_one_unrelated_token():
    torch.manual_seed(3)
    maps = torch.rand(1, 6, 4, 4) + 0.01
    loss = SynGenLoss([[ModifierIndices(noun=(3,), modifiers=((2,),), unrelated=(1,))]])(maps)
    m = maps[0]
    expected = _dist(m, 2, 3) - 0.5 * (_dist(m, 2, 1) + _dist(m, 3, 1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_syngen_loss_k_modifiers_word_pieces_and_empty_rows():
    torch.manual_seed(4)
    maps = torch.rand(2, 8, 3, 3) + 0.01
    unrelated = (1, 6)
    sets = [ModifierIndices(noun=(5,), modifiers=((2,), (3, 4)), unrelated=unrelated)]
    loss = SynGenLoss([sets, []])(maps)
    m = maps[0]

    def dist(a, b):
        return max(_dist(m, i, j).item() for i in a for j in b)

    def rep(word):
        return sum(dist(word, (u,)) for u in unrelated) / len(unrelated)

    expected = sum(dist(mod, (5,)) - 0.5 * (rep(mod) + rep((5,))) for mod in ((2,), (3, 4)))  # noun repelled twice
    assert loss[0].item() == pytest.approx(expected, rel=1e-5)
    assert loss[1].item() == 0.0
    identical = torch.ones(1, 8, 3, 3)
    assert SynGenLoss([sets])(identical).item() == 0.0


def _one_update(loss, latents, alpha):
    """One update with maps = softmax over the token axis of the latents (rows, tokens, h, w)."""
    guide = toy_guide(loss, GuidanceSchedule((alpha,), update_steps=1), lambda x: x.softmax(dim=1))
    return guide(latents, 0, torch.tensor(0))


@pytest.mark.parametrize("method", ["attend-excite", "syngen"])
def test_one_latent_update_by_each_loss_is_a_literal_gradient_step(method):
    torch.manual_seed(5)
    latents = torch.randn(2, 6, 4, 4)
    if method == "attend-excite":
        loss = AttendExciteLoss([[(2,), (4,)], [(3,)]])
    else:
        loss = SynGenLoss([[ModifierIndices((3,), ((2,),), (1, 4))], [ModifierIndices((4,), ((1,), (2,)), (3,))]])
    out = _one_update(loss, latents, 3.0)
    z = latents.clone().requires_grad_(True)
    expected = z - 3.0 * torch.autograd.grad(loss(z.softmax(dim=1)).sum(), z)[0]
    assert torch.allclose(out, expected.detach(), atol=1e-6)
    small = _one_update(loss, latents, 1e-3)
    assert loss(small.softmax(1)).sum() < loss(latents.softmax(1)).sum()  # a small descent step lowers L
