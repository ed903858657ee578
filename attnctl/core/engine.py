"""The attention core shared by every processor: bias fusion, materialised probabilities, kernels.

Tensors use SDPA's layout: query (batch, heads, q_tokens, head_dim), key/value (batch, heads, kv_tokens,
head_dim). Several key sets arrive stacked on a leading axis, (sets, batch, heads, kv_tokens, head_dim),
with weights (sets, batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .controls import AttentionCall, AttentionControl, Kernel


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
