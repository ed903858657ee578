"""Attention arithmetic shared by the LLM routes: masks as transformers hands them over, and the explicit
(materialised) softmax attention that probes record and that every fast path is tested against.

transformers passes a layer one of three masks: ``None`` (plain causal, no padding; the sdpa path's skip),
a boolean keep-mask (sdpa) or an additive float mask (eager), each (batch, 1, q_len, kv_len). Queries are the
last ``q_len`` positions of the ``kv_len`` keys (bottom-right aligned), as with a KV cache.
"""

from __future__ import annotations

import torch


def repeat_kv_heads(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, tokens, d) -> (batch, kv_heads * groups, tokens, d) for grouped-query attention."""
    if groups == 1:
        return states
    batch, kv_heads, tokens, dim = states.shape
    return (
        states[:, :, None]
        .expand(batch, kv_heads, groups, tokens, dim)
        .reshape(batch, kv_heads * groups, tokens, dim)
    )


def causal_keep_mask(q_len: int, kv_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, kv_len) bool: query i (at position kv_len - q_len + i) keeps keys at positions <= its own."""
    query_positions = torch.arange(kv_len - q_len, kv_len, device=device)
    return torch.arange(kv_len, device=device)[None, :] <= query_positions[:, None]


def mask_as_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A transformers mask as an additive float bias, as eager attention uses it: booleans become 0 / the
    dtype's lowest finite value (so a query whose keys are all padding gets finite, ignorable weights)."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return mask.to(dtype)


def materialized_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T * scaling + mask) V with the probabilities, in SDPA layout (the eager reference).

    ``attention_mask`` is as transformers passes it (``None`` meaning causal); ``keep`` is an extra boolean
    keep-mask broadcastable to (batch, heads, q_len, kv_len), e.g. a window. Keys and values may have fewer
    heads than the query (grouped-query attention). Returns output (batch, heads, q_len, head_dim) and
    probabilities (batch, heads, q_len, kv_len) in float32 (float64 for float64 input).
    """
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv_heads(key, groups), repeat_kv_heads(value, groups)
    q_len, kv_len = query.shape[-2], key.shape[-2]
    compute = torch.promote_types(query.dtype, torch.float32)
    logits = (
        torch.matmul(query.to(compute), key.to(compute).transpose(-1, -2)) * scaling
    )  # (b, h, q_len, kv_len)
    if attention_mask is None:
        logits = logits.masked_fill(~causal_keep_mask(q_len, kv_len, query.device), float("-inf"))
    else:
        logits = logits + mask_as_bias(attention_mask[..., :kv_len], compute)
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.matmul(probs, value.to(compute)).to(query.dtype), probs
