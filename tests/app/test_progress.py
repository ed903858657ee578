"""The step-end callback that moves the page's progress bar."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from attnctl.app import progress as module
from attnctl.app.progress import step_progress
from attnctl.pipelines.structured import StructuredDiffusionPipeline


def _recorder(calls):
    return lambda progress, desc=None, unit=None: calls.append((progress, desc, unit))


def test_steps_done_over_the_total_after_the_earlier_runs():
    calls = []
    callback = step_progress(_recorder(calls), "structured", done_before=3, total=6)
    tensors = {"latents": object()}
    assert callback(None, 0, 999, tensors) is tensors  # the pipeline's tensors pass through untouched
    callback(None, 2, 1, tensors)
    assert calls == [((4, 6), "structured", "steps"), ((6, 6), "structured", "steps")]


def test_the_total_defaults_to_the_pipelines_step_count():
    calls = []
    step_progress(_recorder(calls), "refining")(SimpleNamespace(num_timesteps=5), 1, 0, {})
    assert calls == [((2, 5), "refining", "steps")]


def test_the_time_limit_stops_a_run_at_a_model_call_after_the_last_denoising_step(load_tiny_sd, monkeypatch):
    """Past the deadline after the last step, the VAE decode does not start: the limit covers every model call
    (inversion and decoding included), not only the denoising steps; the hooks go away afterwards."""
    pipe = load_tiny_sd(StructuredDiffusionPipeline)
    decoded = []
    pipe.vae.decoder.register_forward_hook(lambda *args: decoded.append(True))
    clock = {"now": 0.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: clock["now"])

    def late_after_last_step(pipeline, step, timestep, tensors):
        clock["now"] = 11.0 if step == pipeline.num_timesteps - 1 else clock["now"]
        return tensors

    with pytest.raises(gr.Error, match="time limit of 10 s"), module.time_limited(pipe, (10.0, 10.0)):
        pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=late_after_last_step)
    assert decoded == []  # stopped before decoding
    assert not any(m._forward_pre_hooks for m in module.watched_modules(pipe))
    clock["now"] = 0.0
    with module.time_limited(pipe, (10.0, 10.0)):
        pipe("a red circle", num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert decoded == [True]
