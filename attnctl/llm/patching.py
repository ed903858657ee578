"""Reversible patches on transformers causal LMs: per-layer attention functions and module swaps.

transformers looks an attention function up by name, ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``,
and builds the mask with ``ALL_MASK_ATTENTION_FUNCTIONS`` under the same name. :func:`route_attention`
registers one name, ``"attnctl"``, whose attention function dispatches on the calling module to the function
installed for that layer (or to the model's original implementation), and whose mask function builds exactly
the mask the original implementation would get. Layers that are not routed therefore run the stock code with
the stock mask, bit for bit. Every patch returns an :class:`AttentionPatch`: ``restore()`` or leaving its
``with`` block puts the original implementation, modules and hooks back.

An attention function has transformers' signature: ``fn(module, query, key, value, attention_mask,
scaling=..., dropout=..., **kwargs) -> (output, weights)`` with query (batch, heads, q_len, head_dim), key and
value (batch, kv_heads, kv_len, head_dim), output (batch, q_len, heads, head_dim).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

IMPLEMENTATION = "attnctl"
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")

AttentionFunction = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]

_routes: weakref.WeakKeyDictionary[nn.Module, AttentionFunction] = weakref.WeakKeyDictionary()
_original_implementation: dict[int, str] = {}  # id(config) -> the implementation the routed model had


@dataclass(frozen=True)
class LayerModule:
    """A module of one decoder layer (a self-attention module, an MoE router): its dotted path, the layer's index
    and the module itself."""

    name: str
    index: int
    module: nn.Module


def attention_layers(model: nn.Module) -> list[LayerModule]:
    """The decoder's self-attention modules (q/k/v/o projections and a ``layer_idx``), in layer order."""
    found = [
        LayerModule(name, module.layer_idx, module)
        for name, module in model.named_modules()
        if all(hasattr(module, attr) for attr in ("q_proj", "k_proj", "v_proj", "o_proj", "layer_idx"))
    ]
    if not found:
        raise ValueError(
            f"model={type(model).__name__} has no attention module with q_proj/k_proj/v_proj/o_proj and "
            "layer_idx; "
            "pass a transformers decoder such as LlamaForCausalLM, Qwen2ForCausalLM or MixtralForCausalLM"
        )
    return sorted(found, key=lambda layer: layer.index)


def select_layers(model: nn.Module, layers: Iterable[int] | None) -> list[LayerModule]:
    """The attention layers whose ``layer_idx`` is in ``layers`` (all of them for ``None``)."""
    available = attention_layers(model)
    if layers is None:
        return available
    wanted = set(layers)
    unknown = wanted - {layer.index for layer in available}
    if unknown:
        raise ValueError(
            f"layers={sorted(wanted)} names {sorted(unknown)}, which the model does not have; "
            f"valid layer indices are 0..{len(available) - 1}"
        )
    return [layer for layer in available if layer.index in wanted]


class AttentionPatch:
    """A reversible change to a model; ``restore()`` (idempotent) or leaving the ``with`` block undoes it."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    @property
    def active(self) -> bool:
        return self._undo is not None

    def restore(self) -> None:
        """Put the model back as it was before the patch."""
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def __enter__(self) -> AttentionPatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


def _dispatch(module: nn.Module, *args, **kwargs):
    """The ``"attnctl"`` attention function: run the function routed to ``module``."""
    route = _routes.get(module)
    if route is None:
        raise RuntimeError(
            f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) runs under "
            "attn_implementation="
            f"{IMPLEMENTATION!r} but has no routed function; install patches with attnctl.llm functions only"
        )
    return route(module, *args, **kwargs)


def _dispatch_mask(*args, config, **kwargs):
    """The ``"attnctl"`` mask function: the mask the model's original implementation would build."""
    original = _original_implementation[id(config)]
    return ALL_MASK_ATTENTION_FUNCTIONS[original](*args, config=config, **kwargs)


def _register() -> None:
    if IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPLEMENTATION, _dispatch)
        AttentionMaskInterface.register(IMPLEMENTATION, _dispatch_mask)


def stock_attention_function(module: nn.Module, implementation: str) -> AttentionFunction:
    """The function transformers runs for ``module`` under ``implementation`` (the model file's eager one)."""
    if implementation == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise ValueError(f"{type(module).__name__}'s module defines no eager_attention_forward")
        return eager
    return ALL_ATTENTION_FUNCTIONS[implementation]


def route_attention(
    model: PreTrainedModel, functions: Mapping[int, Callable[[AttentionFunction], AttentionFunction]]
) -> AttentionPatch:
    """Route the listed attention layers through new functions; every other layer keeps the stock function.

    ``functions`` maps a ``layer_idx`` to a factory that receives the layer's stock attention function (so a
    route
    can fall back to it, e.g. when a window covers the whole sequence) and returns the function to run.
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    implementation = model.config._attn_implementation
    if implementation == IMPLEMENTATION:
        raise ValueError(
            "the model already carries an attnctl attention patch; restore it before adding another"
        )
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={implementation!r} is not supported; load or set the model with "
            f"attn_implementation in {SUPPORTED_IMPLEMENTATIONS} (model.set_attn_implementation('sdpa'))"
        )
    _register()
    layers = attention_layers(model)
    for layer in layers:
        stock = stock_attention_function(layer.module, implementation)
        factory = functions.get(layer.index)
        _routes[layer.module] = factory(stock) if factory is not None else stock
    _original_implementation[id(model.config)] = implementation
    model.set_attn_implementation(IMPLEMENTATION)

    def undo() -> None:
        model.set_attn_implementation(implementation)
        _original_implementation.pop(id(model.config), None)
        for layer in layers:
            _routes.pop(layer.module, None)

    return AttentionPatch(undo)


def swap_modules(replacements: Mapping[tuple[nn.Module, str], nn.Module]) -> AttentionPatch:
    """Set ``parent.<name> = new`` for each ``(parent, name) -> new`` and keep the old modules for restore."""
    originals = {(parent, name): getattr(parent, name) for parent, name in replacements}
    for (parent, name), new in replacements.items():
        setattr(parent, name, new)

    def undo() -> None:
        for (parent, name), old in originals.items():
            setattr(parent, name, old)

    return AttentionPatch(undo)


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The parent module of the dotted path ``name`` and the last path component."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child
