"""Correlation recording and row/column injection: hand example, oracle, touched entries, stock identity."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attnctl.composer import (
    CORRELATION,
    GENERATOR,
    CorrelationMaps,
    CorrelationRecorder,
    GridLayout,
    SubjectInjection,
    all_rows,
    inject_logits,
)
from attnctl.core import (
    AttentionCall,
    AttentionController,
    ControlledAttnProcessor,
    LayerInfo,
    RunState,
    stacked,
)
from attnctl.models.tiny import build_tiny_sd_components


def _oracle(logits, correlation, cells):
    """Entry by entry: the row write, then the column write."""
    out = logits.clone()
    for index in range(out.shape[-2]):
        for m, cell in enumerate(cells.tolist()):
            out[..., index, cell] = correlation[..., index, m]
    for m, cell in enumerate(cells.tolist()):
        for key in range(out.shape[-1]):
            out[..., cell, key] = correlation[..., key, m]
    return out


def test_hand_example_column_write_wins():
    # reference notes Sec. 10: N = 4, S = [1, 2], L rows a, b, c, d
    logits = torch.arange(16.0).view(1, 4, 4) * -1.0  # Lambda[i, j] = -(4 i + j)
    a, b, c, d = [10.0, 11.0], [20.0, 21.0], [30.0, 31.0], [40.0, 41.0]
    correlation = torch.tensor([a, b, c, d]).view(1, 4, 2)
    out = inject_logits(logits, correlation, torch.tensor([1, 2]))[0]
    assert out[0].tolist() == [-0.0, 10.0, 11.0, -3.0]
    assert out[1].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert out[2].tolist() == [11.0, 21.0, 31.0, 41.0]
    assert out[3].tolist() == [-12.0, 40.0, 41.0, -15.0]
    assert out[1, 2] == 30.0 and out[2, 1] == 21.0  # c0 and b1: the column write wins on S x S


def test_vectorised_injection_matches_the_oracle_and_touches_only_subject_rows_and_columns():
    torch.manual_seed(0)
    logits, correlation = torch.randn(2, 3, 12, 12), torch.randn(3, 12, 4)
    cells = torch.tensor([2, 5, 6, 11])
    out = inject_logits(logits, correlation, cells)
    torch.testing.assert_close(out, _oracle(logits, correlation.expand(2, -1, -1, -1), cells))
    untouched = torch.ones(12, 12, dtype=torch.bool)
    untouched[cells] = False
    untouched[:, cells] = False
    assert torch.equal(out[..., untouched], logits[..., untouched])


def test_injecting_a_symmetric_maps_own_restriction_is_the_identity():
    torch.manual_seed(0)
    query = torch.randn(2, 9, 4)
    logits = query @ query.transpose(-1, -2)  # Q = K: symmetric logits
    cells = torch.tensor([1, 4, 7])
    assert torch.equal(inject_logits(logits, logits[..., cells], cells), logits)


SELF = LayerInfo("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", False, "down", 0, 0)


def _layout(reference_cells, target_cells, grid=(4, 4)):
    box = (0, grid[0], 0, grid[1])
    return GridLayout(grid, box, box, torch.tensor(reference_cells, dtype=torch.long),
                      torch.tensor(target_cells, dtype=torch.long))


def _attention_call(batch, branch):
    rows = stacked("uncond", "cond") if batch == 2 else stacked("cond")
    return AttentionCall(SELF, None, RunState(branch=branch, row_layout=rows), batch, 16, (4, 4))


def test_generator_injection_changes_only_the_conditional_rows():
    torch.manual_seed(0)
    maps = CorrelationMaps({SELF.name: torch.randn(2, 16, 3)})
    injection = SubjectInjection(lambda grid: _layout([0, 1, 2], [5, 6, 9]), maps)
    call = _attention_call(2, GENERATOR)
    assert not injection.applies_to(call)  # off until the pipeline activates it
    injection.active = True
    assert injection.applies_to(call)
    logits = torch.randn(2, 2, 16, 16)
    out = injection.edit_logits(call, logits)
    assert torch.equal(out[0], logits[0])
    torch.testing.assert_close(out[1], inject_logits(logits[1], maps.logits[SELF.name], torch.tensor([5, 6, 9])))


def test_injection_with_an_empty_subject_does_not_apply():
    injection = SubjectInjection(lambda grid: _layout([], []), CorrelationMaps(), all_rows)
    injection.active = True
    assert not injection.applies_to(_attention_call(1, GENERATOR))


def _self_attention():
    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4).eval()


def _record(attn, hidden, layout, from_composite):
    maps = CorrelationMaps()
    controller = AttentionController([CorrelationRecorder(lambda grid: layout, maps, from_composite)])
    rows = stacked("composite", "reference") if hidden.shape[0] == 2 else stacked("reference")
    with controller.declared(CORRELATION, rows):
        out = ControlledAttnProcessor(controller, SELF)(attn, hidden)
    return out, maps.logits[SELF.name]


def _project(attn, hidden):
    """(batch, heads, tokens, head_dim) queries, keys and values of a 4-D input."""
    tokens = hidden.flatten(2).transpose(1, 2)  # (batch, channels, h, w) -> (batch, h * w, channels)
    split = lambda x: x.view(x.shape[0], -1, 2, 4).transpose(1, 2)  # noqa: E731
    return split(attn.to_q(tokens)), split(attn.to_k(tokens)), split(attn.to_v(tokens))


def test_release_recorder_attends_to_the_subject_only_and_records_its_logits():
    attn, hidden = _self_attention(), torch.randn(1, 8, 4, 4)
    layout = _layout([3, 6, 10], [3, 6, 10])
    out, recorded = _record(attn, hidden, layout, from_composite=False)
    query, key, value = _project(attn, hidden)
    cells = layout.reference_cells
    expected_logits = query[0] @ key[0, :, cells].transpose(-1, -2) / 2.0  # scale 1 / sqrt(head_dim = 4)
    torch.testing.assert_close(recorded, expected_logits)
    attended = expected_logits.softmax(-1) @ value[0, :, cells]  # (heads, 16, 4): subject-only attention
    expected = attn.to_out[0](attended.transpose(0, 1).reshape(16, 8)).T.reshape(1, 8, 4, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_paper_recorder_takes_queries_from_the_composite_and_keys_from_the_reference():
    attn, hidden = _self_attention(), torch.randn(2, 8, 4, 4)  # [composite, reference]
    layout = _layout([3, 6, 10], [7, 10, 14])
    _, recorded = _record(attn, hidden, layout, from_composite=True)
    query, key, _ = _project(attn, hidden)
    expected = query[0] @ key[1, :, layout.reference_cells].transpose(-1, -2) / 2.0
    torch.testing.assert_close(recorded, expected)
    with pytest.raises(ValueError, match="expects a \\[composite, reference\\] batch"):
        _record(attn, hidden[:1], layout, from_composite=True)


def test_recorder_falls_back_to_the_reference_box_when_the_subject_misses_the_grid():
    attn, hidden = _self_attention(), torch.randn(1, 8, 4, 4)
    empty = GridLayout((4, 4), (1, 3, 1, 3), (1, 3, 1, 3), torch.tensor([], dtype=torch.long),
                       torch.tensor([], dtype=torch.long))
    maps = CorrelationMaps({SELF.name: torch.zeros(1)})
    controller = AttentionController([CorrelationRecorder(lambda grid: empty, maps, False)])
    with controller.declared(CORRELATION, stacked("reference")):
        out = ControlledAttnProcessor(controller, SELF)(attn, hidden)
    query, key, value = _project(attn, hidden)
    box = torch.tensor([5, 6, 9, 10])
    attended = (query[0] @ key[0, :, box].transpose(-1, -2) / 2.0).softmax(-1) @ value[0, :, box]
    expected = attn.to_out[0](attended.transpose(0, 1).reshape(16, 8)).T.reshape(1, 8, 4, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert SELF.name not in maps.logits  # nothing to inject on this layer


def test_inactive_controls_equal_the_stock_processor():
    attn, hidden = _self_attention(), torch.randn(2, 8, 4, 4)
    layout = _layout([3, 6], [3, 6])
    maps = CorrelationMaps()
    controller = AttentionController([CorrelationRecorder(lambda grid: layout, maps, True),
                                      SubjectInjection(lambda grid: layout, maps)])
    with controller.declared(branch=GENERATOR):
        assert torch.equal(ControlledAttnProcessor(controller, SELF)(attn, hidden), AttnProcessor2_0()(attn, hidden))


@pytest.fixture(scope="module")
def unet():
    return build_tiny_sd_components(seed=0)["unet"].eval().requires_grad_(False)


def test_unet_with_empty_subject_injection_equals_stock_exactly(unet):
    torch.manual_seed(1)
    sample, context = torch.randn(2, 4, 16, 12), torch.randn(2, 77, 16)
    stock = unet(sample, 500, context).sample
    injection = SubjectInjection(lambda grid: GridLayout(grid, (0, 1, 0, 1), (0, 1, 0, 1),
                                                         torch.tensor([], dtype=torch.long),
                                                         torch.tensor([], dtype=torch.long)), CorrelationMaps())
    injection.active = True
    controller = AttentionController([injection])
    with controller.installed(unet), controller.declared(branch=GENERATOR):
        assert torch.equal(unet(sample, 500, context).sample, stock)


def test_unet_correlation_then_injection_changes_only_the_conditional_half(unet):
    torch.manual_seed(1)
    sample, context = torch.randn(2, 4, 16, 12), torch.randn(2, 77, 16)
    mask = torch.zeros(16, 12, dtype=torch.bool)
    mask[4:10, 3:8] = True

    def layout_at(grid):
        sub = torch.nn.functional.interpolate(mask[None, None].float(), size=grid)[0, 0].bool().view(-1)
        cells = torch.nonzero(sub).view(-1)
        return GridLayout(grid, (0, grid[0], 0, grid[1]), (0, grid[0], 0, grid[1]), cells, cells)

    maps = CorrelationMaps()
    injection = SubjectInjection(layout_at, maps)
    controller = AttentionController([CorrelationRecorder(layout_at, maps, False), injection])
    stock = unet(sample, 500, context).sample
    with controller.installed(unet):
        with controller.declared(CORRELATION, stacked("reference")):
            unet(sample[1:], 500, context[1:])
        assert set(maps.logits) == {name for name in unet.attn_processors if ".attn1." in name}
        injection.active = True
        with controller.declared(GENERATOR, stacked("uncond", "cond")):
            injected = unet(sample, 500, context).sample
    torch.testing.assert_close(injected[0], stock[0], rtol=1e-4, atol=1e-5)  # explicit softmax vs SDPA only
    assert (injected[1] - stock[1]).abs().max() > 1e-3
