"""Declared batch rows and the read-only run view: one way for every method to say which rows are which."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnctl.core import AttentionControl, AttentionController, BatchRows, RunState, guidance_rows, stacked
from attnctl.models.tiny import build_tiny_sd_components


def test_stacked_parts_split_the_batch_in_order():
    rows = stacked("window", "full")(6)
    assert rows == BatchRows(6, (("window", slice(0, 3)), ("full", slice(3, 6))))
    assert rows["full"] == slice(3, 6) and "window" in rows and rows.get("cond") is None
    assert list(rows) == ["window", "full"]
    with pytest.raises(KeyError, match=r"declares the parts \['window', 'full'\], not 'cond'"):
        rows["cond"]
    with pytest.raises(ValueError, match="batch of 5 rows cannot hold the 2 equal parts"):
        stacked("window", "full")(5)
    with pytest.raises(ValueError, match="distinct"):
        stacked("a", "a")


def test_guidance_rows_follow_the_declared_prompt_count_not_the_shape():
    layout = guidance_rows(2)
    assert layout(4).names == ("uncond", "cond") and layout(4)["cond"] == slice(2, 4)
    assert layout(2).names == ("cond",) and layout(2)["cond"] == slice(0, 2)  # guidance off or cut off
    assert layout(2, "uncond").names == ("uncond",)  # the separate unconditional pass (Wan, Flux true CFG)
    assert layout(2, "cond").names == ("cond",)
    with pytest.raises(ValueError, match="declared 2 conditional rows but the denoiser got a batch of 6"):
        layout(6)
    with pytest.raises(ValueError, match="cond_rows must be >= 1"):
        guidance_rows(0)


@pytest.fixture(scope="module")
def unet():
    return build_tiny_sd_components()["unet"].eval()


class Seen(AttentionControl):
    def __init__(self):
        self.calls = []

    def applies_to(self, call):
        self.calls.append((call.branch, call.rows, call.step))
        return False


def _forward(unet, batch):
    unet(torch.randn(batch, 4, 8, 8), 500, encoder_hidden_states=torch.randn(batch, 5, 16))


def test_calls_see_the_declared_rows_and_branch_of_each_pass(unet):
    seen = Seen()
    controller = AttentionController([seen], rows=guidance_rows(1))
    with torch.no_grad(), controller.installed(unet):
        _forward(unet, 2)
        with controller.declared("correlation", stacked("composite", "reference")):
            _forward(unet, 2)
        _forward(unet, 1)
    first, second, third = seen.calls[0], seen.calls[len(seen.calls) // 3], seen.calls[-1]
    assert first[0] is None and first[1].names == ("uncond", "cond")
    assert second[0] == "correlation" and second[1].names == ("composite", "reference")
    assert third[0] is None and third[1].names == ("cond",)  # the declaration ended with its block


def test_run_state_is_read_only():
    controller = AttentionController()
    with pytest.raises(dataclasses.FrozenInstanceError):
        controller.run.step = 3
    with pytest.raises(AttributeError):
        controller.branch = "cond"
    assert controller.run == RunState()
