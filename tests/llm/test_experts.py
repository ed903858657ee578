"""Fate-style cross-layer expert prediction and the expert-cache simulator."""

from __future__ import annotations

import pytest
import torch

from attnctl.llm.experts import (
    moe_routers,
    predict_next_layer_experts,
    prediction_accuracy,
    record_routing,
    shallow_favouring_allocation,
    simulate_expert_cache,
)
from attnctl.llm.tiny import build_tiny_causal_lm

IDS = torch.randint(4, 99, (2, 32), generator=torch.Generator().manual_seed(0))


def frozen_residual_stream(model) -> None:
    """Equal routers everywhere and layers that add nothing to the residual stream: equal router inputs."""
    with torch.no_grad():
        first = model.model.layers[0].mlp.gate.weight
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.experts.down_proj.zero_()
            if hasattr(layer.mlp, "shared_expert"):
                layer.mlp.shared_expert.down_proj.weight.zero_()
            layer.mlp.gate.weight.copy_(first)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_equal_routers_on_equal_inputs_predict_perfectly(family):
    model = build_tiny_causal_lm(family, num_layers=3)
    frozen_residual_stream(model)
    trace = record_routing(model, IDS)
    accuracy = prediction_accuracy(predict_next_layer_experts(model, trace), trace.experts[1:])
    assert torch.equal(accuracy, torch.ones(2))


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_trace_shapes_and_an_imperfect_prediction_on_a_random_model(family):
    model = build_tiny_causal_lm(family, num_layers=3, num_experts=8, experts_per_token=2)
    trace = record_routing(model, IDS)
    assert trace.layers == [0, 1, 2]
    assert [x.shape for x in trace.inputs] == [(64, 32)] * 3 and [e.shape for e in trace.experts] == [
        (64, 2)
    ] * 3
    accuracy = prediction_accuracy(predict_next_layer_experts(model, trace), trace.experts[1:])
    assert accuracy.shape == (2,) and bool(((accuracy > 0) & (accuracy < 1)).all())


def test_dense_models_are_refused():
    with pytest.raises(ValueError, match="0 top-k router"):
        moe_routers(build_tiny_causal_lm("llama"))


def test_lru_replay_on_a_hand_made_trace():
    experts = [torch.tensor([[0], [1], [0], [2], [0], [1]])]  # one layer, top-1
    report = simulate_expert_cache(experts, num_experts=4, capacity=2, policy="lru")
    # miss 0, miss 1, hit 0, miss 2 (evicts 1), hit 0, miss 1
    assert report.hits == [2] and report.requests == [6] and report.hit_rate == pytest.approx(2 / 6)


def test_shallow_favouring_gives_spare_slots_to_the_first_layers():
    assert shallow_favouring_allocation(num_layers=4, num_experts=8, top_k=2, capacity=14) == [8, 2, 2, 2]
    assert shallow_favouring_allocation(num_layers=3, num_experts=4, top_k=1, capacity=8) == [4, 3, 1]
    with pytest.raises(ValueError, match="capacity=5"):
        shallow_favouring_allocation(num_layers=3, num_experts=4, top_k=2, capacity=5)


def test_perfect_prefetch_hits_every_request_after_the_first_layer():
    generator = torch.Generator().manual_seed(1)
    experts = [torch.randint(0, 8, (50, 1), generator=generator) for _ in range(3)]
    for policy in ("lru", "shallow"):
        report = simulate_expert_cache(experts, 8, capacity=6, policy=policy, predictions=experts[1:])
        assert report.prefetch and report.hits[1:] == report.requests[1:]
    without = simulate_expert_cache(experts, 8, capacity=6, policy="lru")
    assert without.hit_rate < 1


def test_bad_cache_arguments_raise():
    experts = [torch.zeros(4, 1, dtype=torch.long)] * 2
    with pytest.raises(ValueError, match="policy='fifo'"):
        simulate_expert_cache(experts, 4, 4, policy="fifo")
    with pytest.raises(ValueError, match="predictions must cover"):
        simulate_expert_cache(experts, 4, 4, predictions=experts)
