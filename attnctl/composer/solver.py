"""The deterministic, invertible sampler: DPM-Solver++ (multistep, order 1 or 2) on the discrete VP schedule.

This is the solver of the released code (Lu et al. 2022, "DPM-Solver++", Sec. 4, Algorithm 2 with the
"dpmsolver" second-order correction), driven on continuous time ``t`` in ``[1/N, 1]`` where ``log alpha(t)``
interpolates ``0.5 log alphas_cumprod`` piecewise-linearly (``NoiseScheduleVP("discrete")``), on a time-uniform grid.
Order 1 is exactly DDIM (eta = 0). Inversion runs the same update along increasing ``t`` (ODE reversal), keeping the
whole trajectory. Coefficients are computed in float64 and applied to the latents in their own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

# data prediction x0_hat(x, t): the denoiser, already combined with classifier-free guidance
DataPrediction = Callable[[torch.Tensor, float], torch.Tensor]


class DiscreteVPSchedule:
    """alpha(t), sigma(t) and lambda(t) = log alpha - log sigma of a discrete DDPM schedule in continuous time."""

    def __init__(self, alphas_cumprod: torch.Tensor | np.ndarray) -> None:
        alphas = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu())
        self.num_train_steps = len(alphas)
        self._t = np.arange(1, self.num_train_steps + 1, dtype=np.float64) / self.num_train_steps  # t_n = (n+1)/N
        self._log_alpha = 0.5 * np.log(alphas)

    def log_alpha(self, t: float) -> float:
        """Piecewise-linear interpolation of ``0.5 log alphas_cumprod`` at time ``t``."""
        return float(np.interp(t, self._t, self._log_alpha))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(1.0 - math.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """Half log-SNR, ``log alpha_t - log sigma_t``."""
        return math.log(self.alpha(t)) - math.log(self.sigma(t))

    def model_time(self, t: float) -> float:
        """The (float) timestep the network takes: ``(t - 1/N) * N``, so ``t = 1`` is 999 for N = 1000."""
        return (t - 1.0 / self.num_train_steps) * self.num_train_steps

    def grid(self, steps: int) -> list[float]:
        """Decode-order time-uniform grid ``t_0 = 1 > ... > t_steps = 1/N`` (steps + 1 points)."""
        return [float(t) for t in np.linspace(1.0, 1.0 / self.num_train_steps, steps + 1)]


def data_from_output(output: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float, prediction_type: str):
    """The data prediction ``x0_hat`` from a network output (DPM-Solver++ Sec. 3: ``x0 = (x - sigma eps) / alpha``)."""
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; use an epsilon or v_prediction model")


def update_order(step: int, steps: int, order: int) -> int:
    """Order of the ``step``-th update (1-based): warm-up from order 1, and order 1 on the last step when
    ``steps < 10`` (the release's ``lower_order_final``)."""
    step_order = min(order, step)
    if steps < 10 and step == steps:
        step_order = 1
    return step_order


def dpm_update(
    schedule: DiscreteVPSchedule,
    x: torch.Tensor,
    t_next: float,
    times: Sequence[float],
    data: Sequence[torch.Tensor],
    order: int,
) -> torch.Tensor:
    """One multistep DPM-Solver++ update from ``times[-1]`` to ``t_next`` (either direction).

    Order 1 (DPM-Solver++ eq. 9, DDIM): ``x_t = sigma_t / sigma_s x_s - alpha_t (e^{-h} - 1) x0_s``.
    Order 2 (Algorithm 2, "dpmsolver" form): adds ``-0.5 alpha_t (e^{-h} - 1) D`` with
    ``D = (x0_s - x0_prev) / r``, ``r = h_prev / h``.
    """
    t_cur = times[-1]
    lam_cur, lam_next = schedule.lam(t_cur), schedule.lam(t_next)
    h = lam_next - lam_cur
    phi = math.expm1(-h)
    alpha_next = schedule.alpha(t_next)
    out = (schedule.sigma(t_next) / schedule.sigma(t_cur)) * x - (alpha_next * phi) * data[-1]
    if order == 1:
        return out
    ratio = (lam_cur - schedule.lam(times[-2])) / h
    return out - (0.5 * alpha_next * phi / ratio) * (data[-1] - data[-2])


def integrate(
    schedule: DiscreteVPSchedule, predict: DataPrediction, latents: torch.Tensor, times: Sequence[float], order: int
) -> list[torch.Tensor]:
    """Solve the probability-flow ODE along ``times`` (decreasing to sample, increasing to invert); the whole path."""
    steps = len(times) - 1
    path, seen_x0 = [latents], []
    for index in range(steps):
        seen_x0.append(predict(path[-1], times[index]))
        step_order = update_order(index + 1, steps, order)
        path.append(dpm_update(schedule, path[-1], times[index + 1], times[: index + 1], seen_x0, step_order))
    return path


def invert(
    schedule: DiscreteVPSchedule, predict: DataPrediction, latents: torch.Tensor, steps: int, order: int
) -> list[torch.Tensor]:
    """Run the ODE from the clean latent (taken as ``x`` at ``t = 1/N``) up to ``t = 1``.

    Returns the trajectory in *decode* order: entry ``k`` is the latent at ``grid(steps)[k]`` (entry 0 is ``x_T``,
    entry ``steps`` is the input).
    """
    return integrate(schedule, predict, latents, schedule.grid(steps)[::-1], order)[::-1]


def sample(
    schedule: DiscreteVPSchedule, predict: DataPrediction, latents: torch.Tensor, steps: int, order: int
) -> torch.Tensor:
    """Plain deterministic sampling from ``x_T`` at ``t = 1`` down to ``t = 1/N`` (the inverse of :func:`invert`)."""
    return integrate(schedule, predict, latents, schedule.grid(steps), order)[-1]
