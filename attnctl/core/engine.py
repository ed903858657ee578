"""The attention core shared by every processor: the hook template, bias fusion, probabilities, kernels.

:class:`ControlledProcessor` and :class:`CallHooks` are the one template of the hook order (see
:mod:`attnctl.core.controls`); a family's processor subclasses it and does only what is specific to its
module class (projections, norms, rotary embeddings, splitting streams), calling the hooks in between.

Tensors use SDPA's layout: query (batch, heads, q_tokens, head_dim), key/value (batch, heads, kv_tokens,
head_dim). Several key sets arrive stacked on a leading axis, (sets, batch, heads, kv_tokens, head_dim),
with weights (sets, batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .controls import AttentionCall, AttentionControl, ContextSets, ControlSource, Kernel
from .layers import LayerInfo


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """The stock kernel: the same fused call diffusers' ``AttnProcessor2_0`` makes."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Merge boolean keep-masks and additive float biases into one SDPA ``attn_mask``.

    A single mask passes through untouched (so stock calls stay bit-exact); several are summed as additive
    biases, booleans becoming 0 / -inf.
    """
    present = [m for m in masks if m is not None]
    if len(present) <= 1:
        return present[0] if present else None
    dtype = next((m.dtype for m in present if m.is_floating_point()), torch.float32)
    total = None
    for mask in present:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        total = mask.to(dtype) if total is None else total + mask.to(dtype)
    return total


def _add_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask


def _set_weight(weights: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    return weights[index].to(like.dtype).view(-1, 1, 1, 1)


def attend(
    call: AttentionCall,
    controls: Sequence[AttentionControl],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    key_weights: torch.Tensor | None = None,
    default_kernel: Kernel = sdpa,
) -> torch.Tensor:
    """Attention with the controls' logits, probability, kernel and observe hooks applied.

    With no controls (or none that act on this call) this is exactly ``default_kernel`` (:func:`sdpa` unless the
    processor runs its model's own attention dispatch, as the Wan processor does). ``key`` may hold several
    key sets (see :class:`~attnctl.core.controls.ContextSets`); the output is their ``key_weights``-weighted
    sum of attention outputs, each with its own softmax.
    """
    key_sets = key if key.ndim == 5 else key[None]
    if key.ndim == 5 and key_weights is None:
        raise ValueError("key_weights is required when key holds several key sets")
    mask = combine_masks(attn_mask, *(c.logits_bias(call, query.shape[-2], key_sets.shape[-2]) for c in controls))
    kernels = [k for k in (c.kernel(call) for c in controls) if k is not None]
    if len(kernels) > 1:
        raise ValueError(f"{len(kernels)} controls each supply an attention kernel for layer {call.layer.name}")
    if any(c.needs_probs(call) for c in controls):
        if kernels:
            raise ValueError(
                f"layer {call.layer.name}: a control replaces the kernel while another needs the attention "
                "probabilities; disable one of them on this layer"
            )
        return _attend_materialised(call, controls, query, key_sets, value, mask, key_weights)
    kernel: Kernel = kernels[0] if kernels else default_kernel
    if key.ndim == 4:
        return kernel(query, key, value, mask)
    out = None
    for index in range(key_sets.shape[0]):
        part = kernel(query, key_sets[index], value, mask) * _set_weight(key_weights, index, query)
        out = part if out is None else out + part
    return out


def _attend_materialised(
    call: AttentionCall,
    controls: Sequence[AttentionControl],
    query: torch.Tensor,
    key_sets: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    key_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Explicit softmax(QK^T/sqrt(d)) V, the slow path that exposes logits and probabilities to controls."""
    scale = query.shape[-1] ** -0.5  # SDPA's default scale, as the fused stock path uses
    mean_probs = None
    for index in range(key_sets.shape[0]):
        logits = _add_mask(torch.matmul(query, key_sets[index].transpose(-1, -2)) * scale, mask)
        for control in controls:
            logits = control.edit_logits(call, logits)
        probs = logits.float().softmax(dim=-1).to(query.dtype)  # (batch, heads, q_tokens, kv_tokens)
        for control in controls:
            probs = control.edit_probs(call, probs)
        if key_weights is not None:
            probs = probs * _set_weight(key_weights, index, probs)
        mean_probs = probs if mean_probs is None else mean_probs + probs
    for control in controls:
        control.observe(call, mean_probs)
    return torch.matmul(mean_probs, value)


class CallHooks:
    """The controls acting on one call, run in the documented hook order.

    ``cached_output`` and ``edit_output`` wrap the processor's body (see :meth:`ControlledProcessor.controlled`),
    ``context`` feeds its key/value projections, and :meth:`attend` runs hooks 3-7 around the kernel.
    """

    def __init__(self, call: AttentionCall, controls: Sequence[AttentionControl]) -> None:
        self.call = call
        self.controls = list(controls)

    def cached_output(self) -> torch.Tensor | None:
        return next((out for c in self.controls if (out := c.cached_output(self.call)) is not None), None)

    def context(self, encoder_hidden_states: torch.Tensor) -> ContextSets | None:
        return next((s for c in self.controls if (s := c.context(self.call, encoder_hidden_states)) is not None), None)

    def attend(self, *tensors: torch.Tensor | None, **options: Any) -> torch.Tensor:
        """:func:`attend` (query, key, value, attn_mask, key_weights, default_kernel) with this call's controls."""
        return attend(self.call, self.controls, *tensors, **options)

    def edit_output(self, output: torch.Tensor) -> torch.Tensor:
        for control in self.controls:
            output = control.edit_output(self.call, output)
        return output


class ControlledProcessor:
    """Base of every controlled processor: it owns the hook order, subclasses own their module's arithmetic.

    A subclass builds the :class:`AttentionCall` of each invocation with :meth:`make_call` and runs its body
    through :meth:`controlled`. Per-call state lives in the controller (read through ``controller.run``),
    never in ``cross_attention_kwargs``: diffusers drops keyword arguments a processor does not declare.
    """

    def __init__(self, controller: ControlSource, layer: LayerInfo) -> None:
        self.controller = controller
        self.layer = layer

    def make_call(self, module: torch.nn.Module, batch_size: int, query_tokens: int,
                  grid: tuple[int, ...] | None, **view: Any) -> AttentionCall:  # fmt: skip
        return AttentionCall(self.layer, module, self.controller.run, batch_size, query_tokens, grid, **view)

    def controlled(self, call: AttentionCall, body: Callable[[CallHooks], Any], pair: bool = False) -> Any:
        """Hooks 1 and 8 around ``body``: a cached output skips the call, ``edit_output`` sees the output.

        ``pair``: the layer returns ``(image, text)`` streams (joint attention); the output hooks see the image
        stream, and a cached output, which cannot stand for both streams, is refused.
        """
        hooks = CallHooks(call, self.controller.controls_for(call))
        cached = hooks.cached_output()
        if cached is not None:
            if pair:
                raise ValueError(f"layer {call.layer.name} returns image and text streams; cached_output cannot "
                                 "replace it")  # fmt: skip
            return cached
        output = body(hooks)
        if pair:  # (image, text) or, with a Flux IP-Adapter, (image, text, the adapter's term)
            image, *streams = output
            return hooks.edit_output(image), *streams
        return hooks.edit_output(output)
