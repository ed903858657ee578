"""PrimeComposer's settings, their validation, and the step schedule they imply.

Three fractions of the sampling steps steer the run (reference notes Sec. 5-6): ``tau_a`` the correlation pass and
the injection, ``tau_c`` re-pasting the subject over the background latent, ``tau_b`` keeping the background
trajectory outside the target box. They nest, ``0 <= tau_c <= tau_a <= tau_b <= 1``, as in every released run
script: the re-paste uses the subject the correlation pass refreshes, and blending ends last to let seams harmonise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DOMAINS = ("same", "cross")
EXCEPTIONAL_TOKEN_ID = 7788  # TF-ICON's exceptional inversion prompt token, in CLIP's vocabulary
AUTO = "auto"


@dataclass(frozen=True)
class ComposerConfig:
    """How a composition runs.

    Args:
        domain: ``"same"`` (photo into photo: the subject is pasted in pixels before inversion) or ``"cross"``
            (e.g. photo into painting: the inverted subject latent is placed in fresh noise).
        tau_a, tau_b, tau_c: step fractions for injection, background blending and subject re-paste.
        faithful: reproduce the released code where it differs from the paper (see docs/composer.md).
        rca: region-constrained cross-attention; ``None`` picks the mode's default (paper: on; release: off,
            because the release never reaches its RCA code).
        solver_order: 2 for DPM-Solver++(2M) as released, 1 for DDIM.
        inversion_token_id: the token repeated 77 times (no position embeddings) to condition the inversion,
            TF-ICON's "exceptional prompt"; ``None`` inverts with the empty prompt; ``"auto"`` (default) is
            ``EXCEPTIONAL_TOKEN_ID`` (7788, CLIP's) where the model's vocabulary has it, else ``None``.
    """

    domain: str = "same"
    tau_a: float = 0.3
    tau_b: float = 0.8
    tau_c: float = 0.2
    faithful: bool = False
    rca: bool | None = None
    solver_order: int = 2
    inversion_token_id: int | str | None = AUTO

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain={self.domain!r} is not supported; use one of {DOMAINS}")
        for name in ("tau_a", "tau_b", "tau_c"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is outside [0, 1]; pass a fraction of the sampling steps")
        if not self.tau_c <= self.tau_a <= self.tau_b:
            raise ValueError(
                f"tau values are out of order: tau_c={self.tau_c}, tau_a={self.tau_a}, tau_b={self.tau_b}; "
                "they must satisfy tau_c <= tau_a <= tau_b (re-paste, then injection, then blending ends)"
            )
        token = self.inversion_token_id
        if not (token is None or token == AUTO or (isinstance(token, int) and not isinstance(token, bool) and token >= 0)):
            raise ValueError(
                f"inversion_token_id={token!r} must be a token id (int >= 0), None (empty prompt) or 'auto'"
            )
        if self.solver_order not in (1, 2):
            raise ValueError(f"solver_order={self.solver_order} is not supported; use 1 (DDIM) or 2 (DPM-Solver++)")

    @property
    def use_rca(self) -> bool:
        return (not self.faithful) if self.rca is None else self.rca


@dataclass(frozen=True)
class Phases:
    """Which steps do what. ``inject``: generator evaluations ``k`` (at ``t_k``) that inject the correlation
    logits; ``repaste`` and ``keep_background``: latent indices ``j`` (the latent at ``t_j``, 1..steps) blended by
    re-pasting the subject or by restoring the background outside the box."""

    inject: frozenset[int]
    repaste: frozenset[int]
    keep_background: frozenset[int]


def release_threshold(tau: float, steps: int, order: int) -> int:
    """The release's phase end ``int(tau * steps + 1 - order)`` (sampler.py): steps ``order <= j < thr`` are in."""
    return int(tau * steps + 1 - order)


def fraction_steps(tau: float, steps: int) -> int:
    """How many steps make the first ``tau`` fraction of ``steps`` (rounding guards 0.3 * 20 = 6.000000000000001)."""
    return math.floor(round(tau * steps, 9))


def paper_phases(config: ComposerConfig, steps: int) -> Phases:
    """The paper's reading: the first ``tau`` fraction of the generator steps, each blend after its step."""
    n_a, n_b, n_c = (fraction_steps(t, steps) for t in (config.tau_a, config.tau_b, config.tau_c))
    return Phases(frozenset(range(n_a)), frozenset(range(1, n_c + 1)), frozenset(range(n_c + 1, n_b + 1)))


def release_phases(config: ComposerConfig, steps: int) -> Phases:
    """The release's schedule: the ``order`` warm-up evaluations always inject, then ``order <= j < thr(tau)``."""
    order = config.solver_order
    thr_a, thr_b, thr_c = (release_threshold(t, steps, order) for t in (config.tau_a, config.tau_b, config.tau_c))
    repaste = frozenset(range(order, thr_c))
    keep = frozenset(j for j in range(order, thr_b) if j not in repaste)
    return Phases(frozenset(range(order)) | frozenset(range(order, thr_a)), repaste, keep)


def phases_for(config: ComposerConfig, steps: int) -> Phases:
    """The schedule of ``config`` for ``steps`` sampling steps."""
    return release_phases(config, steps) if config.faithful else paper_phases(config, steps)
