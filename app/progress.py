"""Progress bars (a ``callback_on_step_end`` that moves a ``gr.Progress`` bar as the denoiser steps) and the
server's time limit per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gradio as gr
import torch

from attnctl.guidance.pipeline import takes_step_end_callback

from .validation import seeded_generator, user_error, user_errors


def step_progress(
    progress: gr.Progress, stage: str, done_before: int = 0, total: int | None = None
) -> Callable[..., dict]:
    """A diffusers step-end callback reporting ``(done_before + step + 1) / total`` labelled ``stage``.

    Several pipeline calls of one event share one bar: give each its offset ``done_before`` in the total.
    ``total=None`` reads the pipeline's ``num_timesteps`` (e.g. a refinement stage that skips early steps).
    """

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        progress((done_before + step + 1, total or pipe.num_timesteps), desc=stage, unit="steps")
        return tensors

    return on_step_end


def progress_callback(pipe: Any, on_step_end: Callable[..., dict]) -> dict[str, Any]:
    """The ``__call__`` arguments that run ``on_step_end`` after every step: ``callback_on_step_end``, or on a
    pipeline whose family has only diffusers' legacy ``callback`` (PixArt-Sigma) that, every step."""
    if takes_step_end_callback(pipe):
        return {"callback_on_step_end": on_step_end}
    return {"callback": lambda step, timestep, latents: on_step_end(pipe, step, timestep, {}), "callback_steps": 1}


def watched_modules(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's model components and their direct children: every denoiser call (denoising, PrimeComposer's
    inversion, both FreeSwim stages), text encoding, and VAE encoding and decoding (``vae.encode``/``decode`` call
    the VAE's ``encoder``/``decoder`` children, not its ``forward``)."""
    components = [c for c in getattr(pipe, "components", {}).values() if isinstance(c, torch.nn.Module)]
    return components + [child for component in components for child in component.children()]


@contextmanager
def time_limited(pipe: Any, deadline: tuple[float, float]) -> Iterator[None]:
    """Within this block, a model call of ``pipe`` that would start after ``deadline`` (``(time.monotonic() at
    which to stop, the limit in seconds)``) stops the run with a message instead; the pipeline restores its
    processors on the way out. A request overruns the limit by at most one model call (one denoiser step or one
    VAE decode), which the pixel, step and frame caps bound."""

    def check(module: torch.nn.Module, args: Any) -> None:
        if time.monotonic() > deadline[0]:
            raise user_error(f"this request ran past the server's time limit of {deadline[1]:g} s and was "
                             "stopped; use fewer steps or a smaller size")

    handles = [module.register_forward_pre_hook(check) for module in watched_modules(pipe)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def staged_runs(
    pipe: Any, stages: Sequence[tuple[str, dict]], progress: gr.Progress, steps: int,
    deadline: tuple[float, float], seed: float, **common: Any,
) -> tuple[dict[str, Any], dict[str, float]]:
    """``pipe`` run once per ``(stage, arguments)``, each from ``seed`` with the ``common`` arguments, one
    progress bar over all of them and the request's ``deadline`` (:func:`time_limited`); returns the outputs and
    the seconds each stage took, by stage name."""
    results, seconds = {}, {}
    for index, (stage, arguments) in enumerate(stages):
        started = time.perf_counter()
        with time_limited(pipe, deadline), user_errors():
            results[stage] = pipe(
                **common,
                **arguments,
                generator=seeded_generator(seed),
                num_inference_steps=steps,
                **progress_callback(pipe, step_progress(progress, stage, index * steps, len(stages) * steps)),
            )
        seconds[stage] = round(time.perf_counter() - started, 3)
    return results, seconds
