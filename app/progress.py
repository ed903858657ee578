"""Progress bars: a ``callback_on_step_end`` that moves a ``gr.Progress`` bar as the denoiser steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from .validation import seeded_generator, user_error, user_errors


def step_progress(
    progress: gr.Progress, stage: str, done_before: int = 0, total: int | None = None,
    deadline: tuple[float, float] | None = None,
) -> Callable[..., dict]:
    """A diffusers step-end callback reporting ``(done_before + step + 1) / total`` labelled ``stage``.

    Several pipeline calls of one event share one bar: give each its offset ``done_before`` in the total.
    ``total=None`` reads the pipeline's ``num_timesteps`` (e.g. a refinement stage that skips early steps).
    ``deadline``: ``(time.monotonic() at which to stop, the limit in seconds)``; a step ending later stops the
    run there with a message (the pipeline restores its processors on the way out).
    """

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if deadline is not None and time.monotonic() > deadline[0]:
            raise user_error(f"this request ran past the server's time limit of {deadline[1]:g} s and was "
                             "stopped; use fewer steps or a smaller size")
        progress((done_before + step + 1, total or pipe.num_timesteps), desc=stage, unit="steps")
        return tensors

    return on_step_end


def staged_runs(
    pipe: Any, stages: Sequence[tuple[str, dict]], progress: gr.Progress, steps: int,
    deadline: tuple[float, float] | None, seed: float, **common: Any,
) -> tuple[dict[str, Any], dict[str, float]]:
    """``pipe`` run once per ``(stage, arguments)``, each from ``seed`` with the ``common`` arguments and one
    progress bar over all of them; returns the outputs and the seconds each stage took, by stage name."""
    results, seconds = {}, {}
    for index, (stage, arguments) in enumerate(stages):
        started = time.perf_counter()
        with user_errors():
            results[stage] = pipe(
                **common,
                **arguments,
                generator=seeded_generator(seed),
                num_inference_steps=steps,
                callback_on_step_end=step_progress(progress, stage, index * steps, len(stages) * steps, deadline),
            )
        seconds[stage] = round(time.perf_counter() - started, 3)
    return results, seconds
