"""DPM-Solver++ on the discrete VP schedule: diffusers parity, DDIM identity, grid, and inversion round trips.

Round-trip tolerance. Inverting then sampling with the same solver is exact only in the limit: the inverse step
from t_k to t_{k+1} evaluates the model at the less noisy end, the sampling step back at the noisier end, so each
step leaves a local error of the solver's order and the round trip converges like 1/N (DDIM) or 1/N^2 (2M), plus
float32 rounding (~1e-7, negligible). The tiny random UNet is tested on latents it generates itself: its epsilon
does not explain arbitrary latents as noise (a random VAE latent is inverted to ~alpha_T * x0, a 15x shrink, where
the GroupNorm-dominated UNet's sensitivity ~1/|x| makes the ODE ill-conditioned), whereas on its own samples the
ODE is as well-conditioned as a trained model's. Measured there: 20 steps of 2M leave 0.95% relative error, DDIM
3.9% at 20 and 7.8% at 10 steps; the bounds below keep a 2x margin and check the convergence rate.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from attnctl.composer import DiscreteVPSchedule, data_from_output, dpm_update, invert, sample, update_order
from attnctl.models.tiny import build_tiny_sd_components

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _schedule() -> DiscreteVPSchedule:
    return DiscreteVPSchedule(DPMSolverMultistepScheduler(**BETAS).alphas_cumprod)


def _toy_eps(x: torch.Tensor, model_time: float) -> torch.Tensor:
    weights = torch.linspace(-0.3, 0.3, 16).view(4, 4)
    return torch.tanh(torch.einsum("ij,bjhw->bihw", weights, x)) + 1e-3 * model_time


def test_grid_and_model_times_follow_the_release():
    schedule = _schedule()
    grid = schedule.grid(20)
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(0.001)
    for k in range(20):
        assert grid[k] == pytest.approx(1 - 0.999 * k / 20)
    assert [round(schedule.model_time(t), 2) for t in grid[:3]] == [999.0, 949.05, 899.1]


def test_second_order_sampling_matches_diffusers_dpmsolver_multistep():
    # 9 steps put the continuous grid on integer timesteps (999, 888, ..., 111, then t = 1/N): the same points as
    # diffusers' "linspace" spacing with a sigma_min final step; both use lower-order final for short runs
    steps = 9
    reference = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                            timestep_spacing="linspace", final_sigmas_type="sigma_min")
    reference.set_timesteps(steps)
    start = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    expected = start.clone()
    for t in reference.timesteps:
        expected = reference.step(_toy_eps(expected, float(t)), t, expected).prev_sample
    schedule = _schedule()

    def predict(x, t):
        return data_from_output(_toy_eps(x, schedule.model_time(t)), x, schedule.alpha(t), schedule.sigma(t),
                                "epsilon")

    ours = sample(schedule, predict, start, steps, order=2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_first_order_update_is_ddim():
    schedule, x, x0 = _schedule(), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    s, t = 0.7, 0.4
    eps = (x - schedule.alpha(s) * x0) / schedule.sigma(s)
    expected = schedule.alpha(t) * x0 + schedule.sigma(t) * eps  # DDIM, eta = 0
    torch.testing.assert_close(dpm_update(schedule, x, t, [s], [x0], 1), expected, rtol=1e-5, atol=1e-6)


def test_v_prediction_recovers_the_data():
    x0, eps, alpha, sigma = torch.randn(3, 4), torch.randn(3, 4), 0.6, 0.8
    x = alpha * x0 + sigma * eps
    torch.testing.assert_close(data_from_output(alpha * eps - sigma * x0, x, alpha, sigma, "v_prediction"), x0)
    torch.testing.assert_close(data_from_output(eps, x, alpha, sigma, "epsilon"), x0)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        data_from_output(eps, x, alpha, sigma, "sample")


def test_update_order_warms_up_and_lowers_the_final_step_of_short_runs():
    assert [update_order(i, 20, 2) for i in (1, 2, 20)] == [1, 2, 2]
    assert [update_order(i, 6, 2) for i in (1, 2, 5, 6)] == [1, 2, 2, 1]


def _round_trip_error(schedule, predict, latents, steps, order):
    trajectory = invert(schedule, predict, latents, steps, order)
    assert len(trajectory) == steps + 1 and trajectory[-1] is latents
    rebuilt = sample(schedule, predict, trajectory[0], steps, order)
    return ((rebuilt - latents).norm() / latents.norm()).item()


def test_round_trip_converges_at_the_solver_order_on_a_smooth_model():
    schedule = _schedule()

    def predict(x, t):
        return data_from_output(_toy_eps(x, schedule.model_time(t)), x, schedule.alpha(t), schedule.sigma(t),
                                "epsilon")

    latents = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    ddim = [_round_trip_error(schedule, predict, latents, n, 1) for n in (50, 100)]
    second = [_round_trip_error(schedule, predict, latents, n, 2) for n in (50, 100)]
    assert 0.4 < ddim[1] / ddim[0] < 0.6  # first order: halving the step halves the error
    assert second[1] / second[0] < 0.3  # second order: about a quarter
    assert second[1] < 0.016  # measured 0.008 at 100 steps


def test_round_trip_on_the_tiny_model_is_close():
    components = build_tiny_sd_components(seed=0)
    unet, schedule = components["unet"].eval().requires_grad_(False), DiscreteVPSchedule(
        components["scheduler"].alphas_cumprod)
    context = torch.randn(1, 77, 16, generator=torch.Generator().manual_seed(2))

    def predict(x, t):
        output = unet(x, torch.tensor(schedule.model_time(t)), encoder_hidden_states=context).sample
        return data_from_output(output, x, schedule.alpha(t), schedule.sigma(t), "epsilon")

    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    generated = sample(schedule, predict, noise, 20, 2)  # a latent the tiny model itself produces
    assert _round_trip_error(schedule, predict, generated, 20, 2) < 0.02
    ddim = [_round_trip_error(schedule, predict, generated, n, 1) for n in (10, 20)]
    assert ddim[1] < 0.08 and 0.4 < ddim[1] / ddim[0] < 0.6
