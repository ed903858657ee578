"""The step-end callback that moves the page's progress bar."""

from __future__ import annotations

from types import SimpleNamespace

from attnctl.app.progress import step_progress


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
