"""Run state: processors swapped for the call and always restored; step counting; the untouched dict."""

from __future__ import annotations

import pytest
import torch

from attnctl.core import AttentionControl, AttentionController, ControlledAttnProcessor
from attnctl.models.tiny import build_tiny_sd_components


@pytest.fixture(scope="module")
def unet():
    return build_tiny_sd_components()["unet"].eval()


def _run(unet, steps=(999, 999, 500)):
    torch.manual_seed(0)
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    return [unet(sample, t, encoder_hidden_states=context).sample for t in steps]


def test_processors_swapped_inside_and_restored_after(unet):
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    controller = AttentionController()
    with controller.installed(unet):
        assert all(isinstance(p, ControlledAttnProcessor) for p in unet.attn_processors.values())
        assert len(controller.layers) == len(before)
        assert {layer.is_cross for layer in controller.layers} == {True, False}
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_processors_restored_when_the_call_raises(unet):
    originals = unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"), AttentionController().installed(unet):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in originals.items())


def test_installed_with_no_controls_is_bit_exact(unet):
    stock = _run(unet)
    with AttentionController().installed(unet):
        ours = _run(unet)
    assert all(torch.equal(a, b) for a, b in zip(stock, ours))


def test_step_counts_distinct_timesteps_and_resets(unet):
    seen = []

    class Recorder(AttentionControl):
        def applies_to(self, call):
            seen.append((call.step, call.grid))
            return False

    controller = AttentionController([Recorder()])
    with controller.installed(unet):
        _run(unet, steps=(999, 999, 500, 20))  # the repeated timestep is a second pass of the same step
    assert sorted({step for step, _ in seen}) == [0, 1, 2]
    assert controller.forward_count == 4
    assert {grid for _, grid in seen} == {(8, 8), (4, 4)}
    with controller.installed(unet):
        assert controller.step == -1 and controller.forward_count == 0
