"""Attention that also returns its log-sum-exp, and the exact merge of attention over disjoint key sets.

Softmax attention over keys A and B together equals the two partial results weighted by their share of the
normaliser (the online-softmax identity): with ``l = logaddexp(l_A, l_B)``,
``out = exp(l_A - l) out_A + exp(l_B - l) out_B``. This lets a windowed kernel add keys every query sees (a
ViT's CLS token) without carrying them through its tiles.
"""

from __future__ import annotations

import torch

_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def attention_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.scaled_dot_product_attention`` plus each query's log-sum-exp of its scaled, masked logits.

    Shapes: query (batch, heads, L, d), key/value (batch, heads, S, d) (any strides), ``attn_mask`` boolean
    (True = attend) or additive, broadcastable to (L, S) -> output (batch, heads, L, d) and lse
    (batch, heads, L) in float32. On CPU this is PyTorch's fused flash kernel, the one SDPA itself runs (same
    output bits); elsewhere the logits are formed explicitly.
    """
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~attn_mask, float("-inf")
        )
    if _CPU_FLASH is not None and query.device.type == "cpu" and query.dtype in _CPU_FLASH_DTYPES:
        out, lse = _CPU_FLASH(query, key, value, 0.0, False, attn_mask=attn_mask, scale=scale)
        return out, lse.float()
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(query, key.transpose(-1, -2)).float() * scale  # (batch, heads, L, S)
    if attn_mask is not None:
        logits = logits + attn_mask.float()
    lse = logits.logsumexp(dim=-1)
    probs = torch.exp(logits - lse[..., None]).to(value.dtype)
    return torch.matmul(probs, value), lse


def merge_attention(
    out: torch.Tensor, lse: torch.Tensor, other_out: torch.Tensor, other_lse: torch.Tensor
) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from each set's (output, lse); see the module docstring.

    Shapes: outputs (batch, heads, L, d), lse (batch, heads, L) -> (batch, heads, L, d) in ``out``'s dtype.
    """
    total = torch.logaddexp(lse, other_lse)
    weight, other_weight = torch.exp(lse - total)[..., None], torch.exp(other_lse - total)[..., None]
    return (out.float() * weight + other_out.float() * other_weight).to(out.dtype)
