"""The progressively combined loop on a toy denoiser: background exactness, schedules, refresh order, start latent."""

from __future__ import annotations

import pytest
import torch

from attnctl.composer import (
    ComposerConfig,
    DiscreteVPSchedule,
    Placement,
    Trajectories,
    compose,
    initial_latents,
    paste_cells,
    phases_for,
    sample,
)

STEPS = 8


class ToyModel:
    """A smooth stand-in denoiser that logs what the loop asks of it."""

    def __init__(self):
        self.log = []

    def correlate(self, reference, composite, t):
        self.log.append(("correlate", t, reference.clone(), None if composite is None else composite.clone()))

    def predict(self, latents, t, inject):
        self.log.append(("predict", t, inject))
        return 0.8 * torch.tanh(latents) + 0.05 * t


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    schedule = DiscreteVPSchedule(torch.linspace(0.9991, 0.0047, 1000))
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[24:40, 28:36] = True  # subject centred on the canvas, placed off-centre in the composite
    layout = Placement(mask, (16, 8), centre=(0.4, 0.3)).at((8, 8))
    trajectories = Trajectories([torch.randn(1, 4, 8, 8) for _ in range(STEPS + 1)],
                                [torch.randn(1, 4, 8, 8) for _ in range(STEPS + 1)])
    return schedule, layout, trajectories


def _run(setting, config, start=None):
    schedule, layout, trajectories = setting
    model, seen = ToyModel(), []
    start = trajectories.background[0] if start is None else start

    def on_step(index, t, latents, background):
        seen.append((index, latents.clone(), background))
        return latents

    out = compose(model, schedule, config, phases_for(config, STEPS), layout, trajectories, start, on_step)
    return out, seen, model.log


@pytest.mark.parametrize("faithful", [False, True])
def test_every_blended_step_equals_the_background_trajectory_outside_the_box(setting, faithful):
    _, layout, trajectories = setting
    config = ComposerConfig(tau_a=0.5, tau_b=0.75, tau_c=0.25, faithful=faithful)
    phases = phases_for(config, STEPS)
    _, seen, _ = _run(setting, config)
    assert [index for index, _, _ in seen] == list(range(STEPS))
    outside = ~layout.box_mask()
    blended = phases.repaste | phases.keep_background
    assert blended
    for index, latents, background in seen:
        j = index + 1
        assert background is trajectories.background[j]
        if j in blended:
            assert torch.equal(latents[..., outside], background[..., outside])
        if j in phases.repaste:
            assert torch.equal(latents[..., ~layout.target_mask()], background[..., ~layout.target_mask()])


def test_paper_loop_with_every_tau_zero_is_plain_sampling(setting):
    schedule, _, trajectories = setting
    out, _, log = _run(setting, ComposerConfig(tau_a=0.0, tau_b=0.0, tau_c=0.0, rca=False))
    toy = ToyModel()
    expected = sample(schedule, lambda x, t: toy.predict(x, t, False), trajectories.background[0], STEPS, 2)
    assert torch.equal(out, expected)
    assert all(entry[0] == "predict" and not entry[2] for entry in log)


def test_paper_loop_refreshes_the_subject_from_the_current_latent(setting):
    _, layout, trajectories = setting
    _, seen, log = _run(setting, ComposerConfig(tau_a=0.5, tau_b=0.75, tau_c=0.0))
    correlations = [entry for entry in log if entry[0] == "correlate"]
    assert len(correlations) == 4  # the first half of 8 steps
    current = [trajectories.background[0]] + [latents for _, latents, _ in seen]
    for k, (_, _, reference, composite) in enumerate(correlations):
        subject = current[k].flatten(2)[..., layout.target_cells]
        assert torch.equal(reference.flatten(2)[..., layout.reference_cells], subject)
        assert torch.equal(composite.flatten(2)[..., layout.target_cells], subject)
        outside = ~layout.target_mask()
        assert torch.equal(composite[..., outside], trajectories.background[k][..., outside])
    injected = [entry[2] for entry in log if entry[0] == "predict"]
    assert injected == [True] * 4 + [False] * 4


def test_paper_repaste_uses_the_inverted_subject(setting):
    _, layout, trajectories = setting
    _, seen, _ = _run(setting, ComposerConfig(tau_a=0.5, tau_b=0.75, tau_c=0.25))
    for index, latents, _ in seen[:2]:
        j = index + 1
        expected = paste_cells(trajectories.background[j], trajectories.reference[j], layout.reference_cells,
                               layout.target_cells)
        assert torch.equal(latents, expected)


def test_release_loop_warm_up_and_one_step_stale_refresh(setting):
    schedule, layout, trajectories = setting
    _, seen, log = _run(setting, ComposerConfig(tau_a=0.75, tau_b=0.75, tau_c=0.5, faithful=True))
    times = schedule.grid(STEPS)
    first = log[0]
    assert first[0] == "correlate" and first[1] == times[1]  # one warm-up correlation on ref[0] at t_1
    assert torch.equal(first[2], trajectories.reference[0]) and first[3] is None
    assert [entry[2] for entry in log[1:3]] == [True, True]  # both warm-up evaluations inject
    later = [entry for entry in log[3:] if entry[0] == "correlate"]
    assert [entry[1] for entry in later] == times[2:5]  # j = 2 .. thr(0.75) - 1 = 4
    latents = {index + 1: z for index, z, _ in seen}
    for j, (_, _, reference, _) in zip(range(2, 5), later):
        previous = latents[j - 1].flatten(2)[..., layout.target_cells]
        assert torch.equal(reference.flatten(2)[..., layout.reference_cells], previous)
    # re-paste (j < thr(0.5) = 3) puts back the refreshed subject, i.e. the generator's previous latent
    expected = paste_cells(trajectories.background[2], latents[1], layout.target_cells, layout.target_cells)
    assert torch.equal(latents[2], expected)


@pytest.mark.parametrize("domain", ["same", "cross"])
def test_initial_latent_has_noise_in_the_box_and_the_subject_on_its_cells(setting, domain):
    _, layout, trajectories = setting
    noise = torch.randn(1, 4, 8, 8)
    start = initial_latents(trajectories, layout, domain, noise)
    box, subject = layout.box_mask(), layout.target_mask()
    assert torch.equal(start[..., ~box], trajectories.background[0][..., ~box])
    assert torch.equal(start[..., box & ~subject], noise[..., box & ~subject])
    source = trajectories.background[0] if domain == "same" else trajectories.reference[0]
    cells = layout.target_cells if domain == "same" else layout.reference_cells
    assert torch.equal(start.flatten(2)[..., layout.target_cells], source.flatten(2)[..., cells])
