"""Cross-layer expert prediction and expert caching for mixture-of-experts LMs, after Fate (Fang et al. 2025).

Fate's observation (Sec. 3): the router (gate) inputs of adjacent layers are similar, because the residual
stream changes little from one layer to the next. So layer l+1's experts can be predicted, and prefetched,
while layer l runs, by applying layer l+1's router to layer l's router input (Sec. 4.1). Shallow layers
gain least from that (layer 0 has no predecessor), so Fate gives the expert cache to shallow layers first
(Sec. 4.2, "shallow-favoring" caching). :func:`simulate_expert_cache` replays a recorded routing trace
against an LRU cache shared by all layers and against shallow-favouring per-layer LRU caches, with or
without prefetching, and reports hit rates.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .patching import LayerModule

CACHE_POLICIES = ("lru", "shallow")
_LAYER = re.compile(r"layers\.(\d+)\.")


def moe_routers(model: nn.Module) -> list[LayerModule]:
    """The top-k routers of an MoE decoder: modules with ``weight``, ``top_k`` and ``num_experts`` (Qwen2-MoE,
    Mixtral), in layer order."""
    routers = []
    for name, module in model.named_modules():
        match = _LAYER.search(name + ".")
        if match and all(hasattr(module, attr) for attr in ("weight", "top_k", "num_experts")):
            routers.append(LayerModule(name, int(match.group(1)), module))
    if len(routers) < 2:
        raise ValueError(
            f"model={type(model).__name__} has {len(routers)} top-k router(s); cross-layer prediction needs "
            "an MoE decoder with at least two MoE layers (e.g. Qwen2MoeForCausalLM, MixtralForCausalLM)"
        )
    return sorted(routers, key=lambda router: router.index)


@dataclass
class RoutingTrace:
    """What the routers saw and chose on one batch, per MoE layer, tokens flattened batch-major.

    ``inputs[i]`` (tokens, hidden) is the router input of ``layers[i]``; ``experts[i]`` (tokens, top_k) its
    choice.
    """

    layers: list[int]
    inputs: list[torch.Tensor] = field(default_factory=list)
    experts: list[torch.Tensor] = field(default_factory=list)


def _router_experts(router: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(tokens, top_k) expert ids the router picks for ``hidden`` (tokens, hidden_size)."""
    return router(hidden)[2]


@torch.no_grad()
def record_routing(model: nn.Module, input_ids: torch.Tensor) -> RoutingTrace:
    """Run ``model`` on ``input_ids`` (batch, tokens) and record every router's input and chosen experts."""
    routers = moe_routers(model)
    trace = RoutingTrace([router.index for router in routers])
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(layer: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            captured[layer] = (args[0].reshape(-1, args[0].shape[-1]).detach(), output[2].detach())

        return hook

    handles = [router.module.register_forward_hook(hook_for(router.index)) for router in routers]
    try:
        model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    for layer in trace.layers:
        inputs, experts = captured[layer]
        trace.inputs.append(inputs)
        trace.experts.append(experts)
    return trace


@torch.no_grad()
def predict_next_layer_experts(model: nn.Module, trace: RoutingTrace) -> list[torch.Tensor]:
    """Fate's cross-layer gate: element i is layer ``trace.layers[i + 1]``'s router applied to layer
    ``trace.layers[i]``'s router input, (tokens, top_k) predicted expert ids."""
    routers = {router.index: router.module for router in moe_routers(model)}
    return [_router_experts(routers[nxt], trace.inputs[i]) for i, nxt in enumerate(trace.layers[1:])]


def prediction_accuracy(predicted: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per layer: the share of the actually chosen experts that the prediction contains (mean over tokens)."""
    if len(predicted) != len(actual):
        raise ValueError(f"got {len(predicted)} predicted layers for {len(actual)} actual ones")
    return torch.stack(
        [
            (guess[:, :, None] == truth[:, None, :]).any(1).float().mean()
            for guess, truth in zip(predicted, actual)
        ]
    )


def shallow_favouring_allocation(num_layers: int, num_experts: int, top_k: int, capacity: int) -> list[int]:
    """Expert slots per layer: ``top_k`` each, the rest to the shallowest layers first (up to all experts)."""
    if capacity < num_layers * top_k:
        raise ValueError(
            f"capacity={capacity} cannot hold top_k={top_k} experts for each of {num_layers} layers; "
            f"use capacity >= {num_layers * top_k}"
        )
    slots, spare = [top_k] * num_layers, capacity - num_layers * top_k
    for layer in range(num_layers):
        extra = min(spare, num_experts - top_k)
        slots[layer] += extra
        spare -= extra
    return slots


class _LruCache:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.entries = capacity, OrderedDict()

    def touch(self, key: tuple[int, int]) -> bool:
        """Use ``key``: True on a hit; a miss loads it, evicting the least recently used entry if full."""
        hit = key in self.entries
        if hit:
            self.entries.move_to_end(key)
        else:
            if len(self.entries) >= self.capacity:
                self.entries.popitem(last=False)
            self.entries[key] = None
        return hit


@dataclass
class CacheReport:
    """Hit statistics of one simulated run: ``hits[i]`` / ``requests[i]`` for the trace's i-th MoE layer."""

    policy: str
    capacity: int
    prefetch: bool
    hits: list[int]
    requests: list[int]

    @property
    def hit_rate(self) -> float:
        return sum(self.hits) / sum(self.requests)

    @property
    def layer_hit_rates(self) -> list[float]:
        return [hit / total for hit, total in zip(self.hits, self.requests)]


def simulate_expert_cache(
    experts: Sequence[torch.Tensor],
    num_experts: int,
    capacity: int,
    policy: str = "lru",
    predictions: Sequence[torch.Tensor] | None = None,
) -> CacheReport:
    """Replay the expert requests ``experts[l]`` (tokens, top_k) through a cache, token by token, layer by
    layer.

    ``policy="lru"``: one LRU cache of ``capacity`` experts shared by all layers. ``"shallow"``: one LRU cache
    per layer, sized by :func:`shallow_favouring_allocation`. With ``predictions`` (``predictions[l - 1]`` for
    layer l >= 1, as :func:`predict_next_layer_experts` returns) the predicted experts are loaded before each
    request (prefetch); a request hits if its expert is in the cache when it is needed.
    """
    if policy not in CACHE_POLICIES:
        raise ValueError(f"policy={policy!r} is not a cache policy; choose one of {CACHE_POLICIES}")
    if predictions is not None and len(predictions) != len(experts) - 1:
        raise ValueError(f"predictions must cover layers 1.. ({len(experts) - 1}), got {len(predictions)}")
    num_layers, top_k = len(experts), experts[0].shape[1]
    if policy == "lru":
        shared = _LruCache(capacity)
        caches = [shared] * num_layers
    else:
        caches = [
            _LruCache(slots)
            for slots in shallow_favouring_allocation(num_layers, num_experts, top_k, capacity)
        ]
    hits, requests = [0] * num_layers, [0] * num_layers
    chosen = [layer.tolist() for layer in experts]
    prefetched = [None] + [layer.tolist() for layer in predictions] if predictions is not None else None
    for token in range(experts[0].shape[0]):
        for layer, cache in enumerate(caches):
            if prefetched is not None and prefetched[layer] is not None:
                for expert in prefetched[layer][token]:
                    cache.touch((layer, expert))
            for expert in chosen[layer][token]:
                hits[layer] += cache.touch((layer, expert))
                requests[layer] += 1
    return CacheReport(policy, capacity, predictions is not None, hits, requests)
