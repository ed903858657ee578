"""FreeSwim's dual path on a tiny Wan transformer: full rows stay vanilla, the override, the cache replay."""

from __future__ import annotations

import pytest
import torch

from attnctl.core import AttentionControl, AttentionController
from attnctl.freeswim import CACHED, DUAL, DUAL_ROWS, WINDOW, FreeSwimConfig, FreeSwimState, freeswim_controls
from attnctl.freeswim.controls import freeswim_pass
from attnctl.freeswim.wan_processor import wan_processor_factory
from attnctl.models.tiny_wan import build_tiny_wan_transformer

GRID_LATENT = (3, 12, 14)  # latent (frames, height, width) -> token grid (3, 6, 7)


def latents_and_text(seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, *GRID_LATENT, generator=generator), torch.randn(1, 7, 16, generator=generator)


def stock(model, latents, text, t=400.0):
    with torch.no_grad():
        return model(latents, torch.tensor([t] * latents.shape[0]), text, return_dict=False)[0]


class CrossOutputs(AttentionControl):
    """Records every cross-attention layer's output."""

    def __init__(self):
        self.outputs = []

    def applies_to(self, call):
        return call.is_cross

    def edit_output(self, call, output):
        self.outputs.append(output)
        return output


def one_pass(model, controller, state, step, branch, latents, text, t=400.0):
    """One pass as the pipeline runs it; returns the whole output (dual: window rows then full rows)."""
    with freeswim_pass(model, controller, state, step, branch) as mode:
        if mode == DUAL:
            latents, text = torch.cat([latents, latents]), torch.cat([text, text])
        return stock(model, latents, text, t)


def installed(model, state, extra=()):
    controller = AttentionController([*freeswim_controls(state), *extra])
    return controller.installed(model, processor_factory=wan_processor_factory(model))


def test_full_branch_row_is_the_vanilla_model_and_window_row_differs():
    model = build_tiny_wan_transformer().eval()
    latents, text = latents_and_text()
    vanilla = stock(model, latents, text)
    state = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9, attention_scale=None))
    with installed(model, state) as controller:
        out = one_pass(model, controller, state, 0, "cond", latents, text)
    torch.testing.assert_close(out[1:], vanilla, atol=1e-6, rtol=0)  # batch 2 vs 1: GEMM blocking only
    assert (out[:1] - vanilla).abs().max() > 1e-3
    assert state.full_branch_runs == [(0, "cond", "blocks.0.attn1.processor"), (0, "cond", "blocks.1.attn1.processor")]


def test_covering_window_with_stock_scale_gives_the_vanilla_model_on_both_rows():
    model = build_tiny_wan_transformer().eval()
    latents, text = latents_and_text()
    vanilla = stock(model, latents, text)
    state = FreeSwimState(FreeSwimConfig(window=(7, 9), native_tokens=42, attention_scale=None, allow_full=True))
    with installed(model, state) as controller:
        out = one_pass(model, controller, state, 0, "cond", latents, text)
    torch.testing.assert_close(out, vanilla.expand(2, *vanilla.shape[1:]), atol=1e-6, rtol=0)


def test_window_rows_receive_the_full_rows_cross_attention():
    model = build_tiny_wan_transformer().eval()
    latents, text = latents_and_text()
    recorder = CrossOutputs()
    state = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9))
    with installed(model, state, [recorder]) as controller:
        one_pass(model, controller, state, 0, "cond", latents, text)
    assert len(recorder.outputs) == 2
    for output in recorder.outputs:
        assert torch.equal(output[:1], output[1:])


def test_cached_pass_replays_the_dual_pass_cross_attention():
    """Batch-1 cached pass == the window row of the dual pass when the inputs are the same (Sec. 4)."""
    model = build_tiny_wan_transformer().eval()
    latents, text = latents_and_text()
    state = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9, cache_interval=3))
    recorder = CrossOutputs()
    with installed(model, state, [recorder]) as controller:
        dual = one_pass(model, controller, state, 0, "cond", latents, text)
        stored = dict(state.cache)
        cached = one_pass(model, controller, state, 1, "cond", latents, text)
        assert state.mode == CACHED
        window_only = one_pass(model, controller, state, 1, "uncond", latents, text)
        assert state.mode == WINDOW
    assert sorted(stored) == [("cond", "blocks.0.attn2.processor"), ("cond", "blocks.1.attn2.processor")]
    assert all(tensor.shape == (1, 126, 24) for tensor in stored.values())
    torch.testing.assert_close(cached, dual[:1], atol=1e-6, rtol=0)
    assert len(recorder.outputs) == 2 + 2  # the cached pass skipped both cross-attention calls
    assert (window_only - cached).abs().max() > 1e-4  # the uncond pass uses its own cross-attention
    assert state.full_branch_runs == [(0, "cond", "blocks.0.attn1.processor"), (0, "cond", "blocks.1.attn1.processor")]


def test_schedule_per_branch_and_interval():
    state = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9, cache_interval=2))
    assert [state.begin_pass(step, "cond") for step in range(3)] == [DUAL, DUAL, DUAL]  # nothing cached yet
    state.cache[("cond", "blocks.0.attn2.processor")] = torch.zeros(1)
    assert [state.begin_pass(step, "cond") for step in range(4)] == [DUAL, CACHED, DUAL, CACHED]
    assert state.begin_pass(1, "uncond") == WINDOW
    guided = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9, cache_interval=2, guide_uncond=True))
    assert guided.begin_pass(1, "uncond") == DUAL  # guided, and the uncond cache is empty
    plain = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9, dual_path=False))
    assert {plain.begin_pass(step, branch) for step in range(3) for branch in ("cond", "uncond")} == {WINDOW}


def test_dual_pass_needs_its_declared_rows_an_even_batch_and_the_planned_branch():
    model = build_tiny_wan_transformer().eval()
    latents, text = latents_and_text()
    pair = torch.cat([latents, latents]), torch.cat([text, text])
    state = FreeSwimState(FreeSwimConfig(window=(3, 3), native_tokens=9))
    with installed(model, state) as controller:
        state.begin_pass(0, "cond")
        with model.cache_context("cond"), pytest.raises(RuntimeError, match=r"must declare its rows \('window', 'full'\)"):
            stock(model, *pair)
        with controller.declared(rows=DUAL_ROWS), model.cache_context("cond"):
            with pytest.raises(ValueError, match=r"batch of 1 rows cannot hold the 2 equal parts \('window', 'full'\)"):
                stock(model, latents, text)
        with controller.declared(rows=DUAL_ROWS), model.cache_context("uncond"):
            with pytest.raises(RuntimeError, match="planned a 'cond' pass"):
                stock(model, *pair)
