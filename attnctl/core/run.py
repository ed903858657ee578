"""The read-only view of run state that every attention call sees.

The :class:`~attnctl.core.controller.AttentionController` owns the run state and replaces its
:class:`RunState` snapshot before every denoiser pass (step, branch, rows, latent geometry); calls, controls
and processors only read it. That keeps the core acyclic: nothing below the controller imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rows import RowLayout


@dataclass(frozen=True)
class RunState:
    """What is known about the denoiser pass in progress.

    ``step`` counts denoiser evaluations at distinct timesteps (0-based, -1 before the first pass);
    ``branch`` names the pass (``"cond"``/``"uncond"`` from diffusers' ``cache_context``, or what the pipeline
    declared, e.g. PrimeComposer's ``"generator"``); ``row_layout`` is the declared layout of the batch, which
each call resolves against its batch size (``call.rows``).
    ``sample_shape`` is the denoiser's latent input; ``image_grid`` the patch grid of a transformer's image
    tokens (None for UNets, whose grids follow from ``sample_hw``); ``text_tokens`` the text length of a joint
    sequence where the processor cannot see it (Flux's single-stream blocks).
    """

    step: int = -1
    timestep: float | None = None
    branch: str | None = None
    row_layout: RowLayout | None = None
    sample_shape: tuple[int, ...] | None = None
    image_grid: tuple[int, ...] | None = None
    text_tokens: int | None = None
    forward_count: int = 0

    @property
    def sample_hw(self) -> tuple[int, int] | None:
        """(height, width) of a spatial latent; None for packed token latents (Flux) or before any pass."""
        if self.sample_shape is None or len(self.sample_shape) < 4:
            return None
        return tuple(self.sample_shape[-2:])
