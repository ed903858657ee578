"""Training-free causal sliding-window attention with attention sinks for pretrained transformers LMs.

Each query attends its own token, the ``window - 1`` before it and the first ``sinks`` tokens (geometry in
:mod:`attnctl.core.causal_windows`). The kernel is blocked: a block of ``block`` queries attends to the
``block + window - 1`` keys its windows span (an overlapping strided view of the keys, copied only when
sinks are prepended) plus the sinks, with one small mask shared by all interior blocks, so time and memory
grow linearly with the sequence: O(q_len * (block + window + sinks)), never a q_len x kv_len matrix. This
is the 1-D causal case of the tile-and-key-rectangle scheme of :mod:`attnctl.core.window_tiles`.

:func:`apply_sliding_window` installs the kernel on a model's attention layers (reversibly). A layer whose
window covers the whole sequence runs the model's stock attention function, so the patch is exactly the
original model on inputs no longer than the window.

Models whose config already sets ``sliding_window`` (Mistral; layers typed ``sliding_attention``) evict the
first tokens from their rolling KV cache and mask them in the full forward pass, so attention sinks cannot be
kept there: :func:`apply_sliding_window` refuses ``sinks > 0`` on such layers (with ``sinks=0`` the patch
equals the native window, cached or not). Set ``model.config.sliding_window = None`` first to give the patch
the whole cache; it then equals its own full forward pass under cached decoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from attnctl.core.causal_windows import causal_window_keep_mask, check_causal_window, covers_sequence

from .attention import mask_as_bias, materialized_attention, repeat_kv_heads
from .patching import AttentionFunction, AttentionPatch, route_attention, select_layers


def _check_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(
            f"block={block!r} must be a positive integer (queries per block; 64 is a good default)"
        )


def _block_keep(
    q_len: int, kv_len: int, window: int, sinks: int, block: int, device: torch.device
) -> torch.Tensor:
    """(blocks, block, sinks + block + window - 1) bool: the sink and span keys each block query keeps."""
    blocks, span, offset = math.ceil(q_len / block), block + window - 1, kv_len - q_len
    band = causal_window_keep_mask(block, span, window, device=device)  # (block, span): interior blocks
    first = offset + torch.arange(blocks, device=device)[:, None] * block  # (blocks, 1) first query position
    key_positions = first - (window - 1) + torch.arange(span, device=device)  # (blocks, span)
    query_positions = first + torch.arange(block, device=device)  # (blocks, block)
    keep = band & (key_positions >= 0)[:, None, :]
    sink_keys = torch.arange(sinks, device=device)
    outside_window = sink_keys < (query_positions - window + 1)[..., None]  # (blocks, block, sinks)
    keep = torch.cat([outside_window, keep], dim=-1)
    padded_query = (query_positions >= kv_len)[..., None]  # rows past the last query: keep something, dropped
    return keep | padded_query


def _block_mask_bias(
    attention_mask: torch.Tensor,
    q_len: int,
    kv_len: int,
    window: int,
    sinks: int,
    block: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """transformers' (batch, 1, q_len, kv_len) mask gathered into the blocked layout, as an additive bias."""
    blocks, span, offset = math.ceil(q_len / block), block + window - 1, kv_len - q_len
    bias = mask_as_bias(attention_mask[..., :kv_len], dtype)
    bias = F.pad(bias, (0, 0, 0, blocks * block - q_len))  # rows padded to whole blocks
    bias = bias.unflatten(2, (blocks, block))  # (b, 1, blocks, block, kv)
    first = offset + torch.arange(blocks, device=bias.device)[:, None] * block
    span_keys = (first - (window - 1) + torch.arange(span, device=bias.device)).clamp(0, kv_len - 1)
    columns = torch.cat([torch.arange(sinks, device=bias.device).expand(blocks, sinks), span_keys], dim=-1)
    index = columns[:, None, :].expand(*bias.shape[:2], blocks, block, columns.shape[-1])
    return torch.gather(bias, -1, index)  # (b, 1, blocks, block, sinks + span)


def sliding_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window: int,
    sinks: int = 0,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    block: int = 64,
    dropout: float = 0.0,
    reference: bool = False,
) -> torch.Tensor:
    """Blocked causal sliding-window attention in SDPA layout: (batch, heads, q_len, head_dim) out.

    ``key``/``value`` are (batch, kv_heads, kv_len, head_dim) with kv_heads dividing heads; queries are the
    last
    q_len positions. ``attention_mask`` is a transformers padding mask (boolean keep-mask or additive float,
    (batch, 1, q_len, kv_len)) on top of the window, or None. ``reference=True`` runs the slow oracle instead:
    explicit softmax over the full q_len x kv_len logits with the dense window mask (no dropout).
    """
    check_causal_window(window, sinks)
    if reference:
        keep = causal_window_keep_mask(query.shape[-2], key.shape[-2], window, sinks, device=query.device)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return materialized_attention(query, key, value, attention_mask, scale, keep=keep)[0]
    _check_block(block)
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[-2]
    sinks = min(sinks, kv_len)
    block = min(block, q_len)
    blocks, span, offset = math.ceil(q_len / block), block + window - 1, kv_len - q_len
    groups = heads // key.shape[1]
    key, value = repeat_kv_heads(key, groups), repeat_kv_heads(value, groups)

    def spans(states: torch.Tensor) -> torch.Tensor:
        # (b, h, kv, d) -> (b, h, blocks, sinks + span, d); block n's span starts at first_n - window + 1
        padded = F.pad(states, (0, 0, window - 1, blocks * block - q_len))
        windows = padded[:, :, offset:].unfold(2, span, block).transpose(-1, -2)  # strided view, no copy
        if sinks == 0:
            return windows
        sink_states = states[:, :, None, :sinks].expand(batch, heads, blocks, sinks, dim)
        return torch.cat([sink_states, windows], dim=3)

    keep = _block_keep(q_len, kv_len, window, sinks, block, query.device)
    bias = torch.zeros(keep.shape, dtype=query.dtype, device=query.device).masked_fill(~keep, float("-inf"))
    if attention_mask is not None:
        bias = bias + _block_mask_bias(attention_mask, q_len, kv_len, window, sinks, block, query.dtype)
    queries = F.pad(query, (0, 0, 0, blocks * block - q_len)).unflatten(
        2, (blocks, block)
    )  # (b, h, blocks, block, d)
    out = F.scaled_dot_product_attention(
        queries, spans(key), spans(value), attn_mask=bias, dropout_p=dropout, scale=scaling
    )  # (b, h, blocks, block, d)
    return out.flatten(2, 3)[:, :, :q_len]


def _window_route(window: int, sinks: int, block: int):
    def factory(stock: AttentionFunction) -> AttentionFunction:
        def windowed(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            if covers_sequence(key.shape[-2], window):
                return stock(
                    module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
                )
            out = sliding_window_attention(
                query, key, value, window, sinks, attention_mask, scaling, block, dropout
            )
            return out.transpose(1, 2).contiguous(), None  # (b, q_len, heads, d)

        return windowed

    return factory


def native_sliding_window(config, layer_index: int) -> int | None:
    """The window a transformers config gives layer ``layer_index`` natively (None for full attention).

    Follows transformers' cache rule: ``layer_types`` when the config lists them, else ``sliding_window``.
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and layer_types[layer_index] != "sliding_attention"):
        return None
    return window


def _refuse_sinks_under_a_native_window(model: PreTrainedModel, layers, sinks: int) -> None:
    if sinks == 0:
        return
    native = {layer.index: native_sliding_window(model.config, layer.index) for layer in layers}
    windowed = {index: window for index, window in native.items() if window is not None}
    if windowed:
        raise ValueError(
            f"sinks={sinks} on layers {sorted(windowed)}, which have a native sliding_window="
            f"{next(iter(windowed.values()))}: their rolling KV cache drops the first tokens (and their mask "
            "hides them), so sinks would silently change under cached decoding. Pass sinks=0, or set "
            "model.config.sliding_window = None before applying the patch to keep every token in the cache"
        )


def apply_sliding_window(
    model: PreTrainedModel, window: int, sinks: int = 0, layers: Iterable[int] | None = None, block: int = 64
) -> AttentionPatch:
    """Make the chosen attention layers (all by default) causal sliding-window attention with ``sinks`` sinks.

    Training-free and reversible: use as a context manager or call ``restore()``. Positions (RoPE) are
    unchanged; the KV cache still holds every key (the window limits compute, not the cache), except on
    layers with a native ``sliding_window``, whose rolling cache and mask stay in force (the effective window
    is then the smaller of the two) and where ``sinks > 0`` is refused (see the module docstring).
    """
    check_causal_window(window, sinks)
    _check_block(block)
    chosen = select_layers(model, layers)
    _refuse_sinks_under_a_native_window(model, chosen, sinks)
    route = _window_route(window, sinks, block)
    return route_attention(model, {layer.index: route for layer in chosen})
