"""Hybrid gated-linear + sliding-window attention after Lizard (Nguyen et al. 2025, Sec. 3).

Two branches per head, summed:

* **gated linear attention** (global context, constant state): with feature maps phi and a data-dependent
  per-head decay g_t in (0, 1),
  ``S_t = g_t S_{t-1} + phi(k_t)^T v_t``, ``z_t = g_t z_{t-1} + phi(k_t)``,
  ``o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)``;
  phi is a learnable Hedgehog feature map ``[softmax(x W), softmax(-x W)]`` (Zhang et al. 2024) and
  ``g_t = sigmoid(x_t W_g + b_g) ** (1 / temperature)`` (GLA's gate, Yang et al. 2024, Sec. 4.4);
* **sliding-window softmax attention** over the last ``window`` tokens plus ``sinks`` first tokens (Lizard's
  meta memory), with the blocked kernel of :mod:`attnctl.llm.sliding_window`.

The branches are normalised separately and added, the linear one weighted per head by ``linear_scale``
(``o = softmax_window + linear_scale_h * linear``). ``linear_scale`` starts at 0, so a freshly swapped layer
is its sliding-window branch alone; where the window covers the input that branch runs the replaced module's
own attention function, and :func:`apply_hybrid_attention` leaves the model's outputs unchanged bit for bit.
On longer inputs the swap is sliding-window attention until the linear branch is trained: the hybrid is a
model to fine-tune (Lizard first trains the feature maps and gates to match softmax attention, then
fine-tunes the model), not a training-free swap. The decay is one scalar per head and step (the head-wise form
of GLA's gate), which keeps every decay factor ``exp(L_t - L_s)`` of the cumulative log-decay L at most 1.

Three equal forms of the linear branch: :func:`gated_linear_attention_reference` (quadratic, masked: the
oracle), :func:`gated_linear_attention_chunked` (parallel, O(T * chunk)) and the recurrent
:meth:`LizardAttention.step`, whose state (S, z, the sinks and a buffer of the last ``window`` keys/values)
does not grow with the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from attnctl.core.causal_windows import check_causal_window, covers_sequence

from .attention import causal_keep_mask, repeat_kv_heads
from .patching import (
    SUPPORTED_IMPLEMENTATIONS,
    AttentionFunction,
    AttentionPatch,
    parent_of,
    select_layers,
    stock_attention_function,
    swap_modules,
)
from .sliding_window import sliding_window_attention

EPS = 1e-6


def hedgehog_features(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hedgehog features ``[softmax(x W), softmax(-x W)]`` per head (positive): (b,h,t,d) -> (b,h,t,2f)."""
    projected = torch.einsum("bhtd,hdf->bhtf", x, weight)
    return torch.cat([projected.softmax(-1), (-projected).softmax(-1)], dim=-1)


def gated_linear_attention_reference(
    q_features: torch.Tensor, k_features: torch.Tensor, value: torch.Tensor, log_decay: torch.Tensor
) -> torch.Tensor:
    """The oracle: ``o_t = sum_{s<=t} w_ts v_s / sum_{s<=t} w_ts``
    with ``w_ts = exp(L_t - L_s) phi(q_t) . phi(k_s)``.

    Shapes: features (b, h, t, f), value (b, h, t, d), log_decay (b, h, t) <= 0; O(t^2) memory.
    """
    cumulative = log_decay.cumsum(-1)
    causal = torch.ones(
        cumulative.shape[-1], cumulative.shape[-1], dtype=torch.bool, device=value.device
    ).tril()
    exponent = (cumulative[..., :, None] - cumulative[..., None, :]).masked_fill(~causal, float("-inf"))
    weights = (q_features @ k_features.transpose(-1, -2)) * exponent.exp()  # (b, h, t, t)
    return (weights @ value) / (weights.sum(-1, keepdim=True) + EPS)


def gated_linear_attention_chunked(
    q_features: torch.Tensor,
    k_features: torch.Tensor,
    value: torch.Tensor,
    log_decay: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The parallel form: exact attention inside chunks of ``chunk`` tokens, a carried state between them.

    With ``c`` the last token before a chunk, a query t of the chunk reads ``exp(L_t - L_c) phi(q_t) S_c``
    from
    the state and the chunk's own keys with the reference weights; the state then advances by
    ``S <- exp(L_end - L_c) S + sum_s exp(L_end - L_s) phi(k_s)^T v_s``. Every exponent is <= 0.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive integer")
    batch, heads, tokens, features = q_features.shape
    chunk = min(chunk, tokens)
    chunks, pad = math.ceil(tokens / chunk), -tokens % chunk

    def blocked(x: torch.Tensor) -> torch.Tensor:  # (b, h, t, ...) -> (b, h, chunks, chunk, ...), zero-padded
        return F.pad(x, (0, 0) * (x.ndim - 3) + (0, pad)).unflatten(2, (chunks, chunk))

    qf, kf, v = blocked(q_features), blocked(k_features), blocked(value)
    local = blocked(log_decay).cumsum(-1)  # (b, h, chunks, chunk): L_t - L_c within each chunk
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=value.device).tril()
    exponent = (local[..., :, None] - local[..., None, :]).masked_fill(~causal, float("-inf"))
    weights = (qf @ kf.transpose(-1, -2)) * exponent.exp()  # (b, h, chunks, chunk, chunk)
    numerator, denominator = weights @ v, weights.sum(-1)
    to_end = (local[..., -1:] - local).exp()  # (b, h, chunks, chunk): exp(L_end - L_s)
    chunk_states = (kf * to_end[..., None]).transpose(-1, -2) @ v  # (b, h, chunks, f, d)
    chunk_norms = (kf * to_end[..., None]).sum(-2)  # (b, h, chunks, f)
    state = value.new_zeros(batch, heads, features, value.shape[-1])
    norm = value.new_zeros(batch, heads, features)
    read_num, read_den = [], []
    for index in range(chunks):  # the carried state: one small step per chunk
        from_start = local[:, :, index].exp()[..., None]  # (b, h, chunk, 1): exp(L_t - L_c)
        read_num.append(from_start * (qf[:, :, index] @ state))
        read_den.append(from_start[..., 0] * (qf[:, :, index] @ norm[..., None])[..., 0])
        decay = local[:, :, index, -1].exp()[..., None]  # (b, h, 1)
        state = decay[..., None] * state + chunk_states[:, :, index]
        norm = decay * norm + chunk_norms[:, :, index]
    numerator = numerator + torch.stack(read_num, dim=2)
    denominator = denominator + torch.stack(read_den, dim=2)
    out = numerator / (denominator[..., None] + EPS)  # (b, h, chunks, chunk, d)
    return out.flatten(2, 3)[:, :, :tokens]


def _rotate(x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """RoPE as Llama/Qwen2/Mixtral apply it: ``x cos + rotate_half(x) sin``, cos/sin (b, t, d)."""
    if position_embeddings is None:
        return x
    cos, sin = (part.unsqueeze(1) for part in position_embeddings)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@dataclass
class LizardState:
    """Constant-size recurrent state of one :class:`LizardAttention` layer for a batch.

    ``linear``/``norm``: S (b, h, f, d) and z (b, h, f); ``sink_keys``/``sink_values``: the first ``sinks``
    tokens (b, kv_heads, sinks, d); ``window_keys``/``window_values``: buffer of the last ``window`` tokens,
    oldest first (b, kv_heads, window, d); ``seen``: tokens consumed so far.
    """

    linear: torch.Tensor
    norm: torch.Tensor
    sink_keys: torch.Tensor
    sink_values: torch.Tensor
    window_keys: torch.Tensor
    window_values: torch.Tensor
    seen: int = 0


class LizardAttention(nn.Module):
    """Lizard-style hybrid attention layer with transformers' attention signature and a recurrent ``step``.

    Build it standalone or from a pretrained attention module (:meth:`from_attention`, sharing its q/k/v/o
    projections; new parameters are the feature map, the decay gate and ``linear_scale``, the per-head weight
    of the linear branch, ``linear_init`` at first). ``forward`` returns ``(output, None)`` like a
    transformers attention module; it takes unpadded batches only. ``stock_attention`` (set by
    :meth:`from_attention`) is the replaced module's attention function, run whenever the window covers the
    input.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int = 64,
        sinks: int = 4,
        chunk: int = 64,
        gate_temperature: float = 16.0,
        gate_bias: float = 2.0,
        layer_idx: int = 0,
        linear_init: float = 0.0,
    ) -> None:
        super().__init__()
        check_causal_window(window, sinks)
        num_kv_heads = num_kv_heads or num_heads
        head_dim = head_dim or hidden_size // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.sinks, self.chunk, self.gate_temperature = window, sinks, chunk, gate_temperature
        self.layer_idx, self.scaling = layer_idx, head_dim**-0.5
        self.num_key_value_groups, self.is_causal = num_heads // num_kv_heads, True  # as stock functions read
        self.stock_attention: AttentionFunction | None = None
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.feature_map = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1))  # (h, d, f = d)
        self.gate_proj = nn.Linear(hidden_size, num_heads)
        nn.init.zeros_(self.gate_proj.weight)
        nn.init.constant_(self.gate_proj.bias, gate_bias)
        self.linear_scale = nn.Parameter(torch.full((num_heads,), float(linear_init)))

    @classmethod
    def from_attention(
        cls, attention: nn.Module, num_heads: int, implementation: str = "sdpa", **kwargs
    ) -> LizardAttention:
        """A hybrid layer reusing a transformers attention module's projections (Lizard's linearisation) and,
        for inputs the window covers, its attention function under ``implementation``."""
        head_dim = attention.q_proj.out_features // num_heads
        layer = cls(
            attention.q_proj.in_features,
            num_heads,
            attention.k_proj.out_features // head_dim,
            head_dim,
            layer_idx=attention.layer_idx,
            **kwargs,
        ).to(device=attention.q_proj.weight.device, dtype=attention.q_proj.weight.dtype)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer, name, getattr(attention, name))
        layer.stock_attention = stock_attention_function(attention, implementation)
        return layer

    def _project(self, hidden_states: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, ...]:
        """(b, t, hidden) -> q (b, h, t, d), k and v (b, kv_h, t, d) after RoPE, log-decay (b, h, t)."""
        batch, tokens, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, tokens, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, tokens, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, tokens, -1, self.head_dim).transpose(1, 2)
        query, key = _rotate(query, position_embeddings), _rotate(key, position_embeddings)
        log_decay = F.logsigmoid(self.gate_proj(hidden_states)).transpose(1, 2) / self.gate_temperature
        return query, key, value, log_decay

    def _linear_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        groups = self.num_heads // self.num_kv_heads
        q_features = hedgehog_features(query * self.scaling**0.5, self.feature_map)
        k_features = hedgehog_features(repeat_kv_heads(key, groups) * self.scaling**0.5, self.feature_map)
        return q_features, k_features, repeat_kv_heads(value, groups)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """The parallel form over a whole unpadded sequence: (b, t, hidden) -> ((b, t, hidden), None)."""
        if attention_mask is not None:
            _check_causal_only(attention_mask)
        query, key, value, log_decay = self._project(hidden_states, position_embeddings)
        if self.stock_attention is not None and covers_sequence(key.shape[-2], self.window):
            local, _ = self.stock_attention(
                self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0
            )  # (b, t, h, d): the replaced module's own computation
        else:
            local = sliding_window_attention(
                query, key, value, self.window, self.sinks, scaling=self.scaling
            ).transpose(1, 2)
        q_features, k_features, values = self._linear_inputs(query, key, value)
        glob = gated_linear_attention_chunked(q_features, k_features, values, log_decay, self.chunk)
        return self.o_proj(self._mix(local, glob)), None

    def _mix(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """local (b, t, h, d) + linear_scale_h * glob (b, h, t, d) -> (b, t, h * d), as ``o_proj`` takes it."""
        return (local + self.linear_scale[:, None] * glob.transpose(1, 2)).flatten(2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LizardState:
        """An empty recurrent state for ``batch_size`` sequences."""
        weight = self.q_proj.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        features = 2 * self.feature_map.shape[-1]
        kv = (batch_size, self.num_kv_heads, 0, self.head_dim)
        return LizardState(
            linear=torch.zeros(
                batch_size, self.num_heads, features, self.head_dim, device=device, dtype=dtype
            ),
            norm=torch.zeros(batch_size, self.num_heads, features, device=device, dtype=dtype),
            sink_keys=torch.zeros(kv, device=device, dtype=dtype),
            sink_values=torch.zeros(kv, device=device, dtype=dtype),
            window_keys=torch.zeros(kv, device=device, dtype=dtype),
            window_values=torch.zeros(kv, device=device, dtype=dtype),
        )

    @torch.no_grad()
    def step(
        self, hidden_state: torch.Tensor, state: LizardState, position_embeddings=None
    ) -> tuple[torch.Tensor, LizardState]:
        """The recurrent form for one token: (b, hidden) -> (b, hidden) and the next state.

        ``position_embeddings`` are this token's RoPE (cos, sin), each (b, 1, head_dim), or None.
        """
        query, key, value, log_decay = self._project(hidden_state[:, None], position_embeddings)
        q_features, k_features, values = self._linear_inputs(query, key, value)
        decay = log_decay.exp()[..., None]  # (b, h, 1, 1)
        linear = decay * state.linear + k_features.transpose(-1, -2) @ values  # (b, h, f, d)
        norm = decay[..., 0] * state.norm + k_features[:, :, 0]
        glob = (q_features @ linear) / ((q_features @ norm[..., None]) + EPS)  # (b, h, 1, d)

        position = state.seen
        sink_keys, sink_values = state.sink_keys, state.sink_values
        if position < self.sinks:
            sink_keys, sink_values = torch.cat([sink_keys, key], 2), torch.cat([sink_values, value], 2)
        window_keys = torch.cat([state.window_keys, key], 2)[:, :, -self.window :]
        window_values = torch.cat([state.window_values, value], 2)[:, :, -self.window :]
        # sinks still inside the window are read there, not twice
        outside = torch.arange(sink_keys.shape[2], device=key.device) < position - self.window + 1
        keys = torch.cat([sink_keys[:, :, outside], window_keys], 2)
        vals = torch.cat([sink_values[:, :, outside], window_values], 2)
        groups = self.num_heads // self.num_kv_heads
        local = F.scaled_dot_product_attention(
            query, repeat_kv_heads(keys, groups), repeat_kv_heads(vals, groups), scale=self.scaling
        )
        out = self.o_proj(self._mix(local.transpose(1, 2), glob))[:, 0]
        return out, LizardState(
            linear, norm, sink_keys, sink_values, window_keys, window_values, position + 1
        )


def _check_causal_only(attention_mask: torch.Tensor) -> None:
    """ValueError if a transformers mask hides more than future keys (padding; the linear branch cannot)."""
    keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    causal = causal_keep_mask(keep.shape[-2], keep.shape[-1], keep.device)
    if not torch.equal(keep, causal.expand_as(keep)):
        raise ValueError(
            "LizardAttention takes unpadded batches only; the attention_mask hides padding tokens"
        )


class HybridPatch(AttentionPatch):
    """The handle :func:`apply_hybrid_attention` returns: restores the original attention modules."""

    def __init__(self, undo, layers: list[LizardAttention]) -> None:
        super().__init__(undo)
        self.layers = layers

    def new_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the hybrid layers add (feature maps, decay gates, linear-branch weights), not the
        shared projections."""
        for layer in self.layers:
            yield layer.feature_map
            yield from layer.gate_proj.parameters()
            yield layer.linear_scale


def apply_hybrid_attention(
    model: PreTrainedModel, window: int = 64, sinks: int = 4, layers: Iterable[int] | None = None, **kwargs
) -> HybridPatch:
    """Replace the chosen attention layers (all by default) by :class:`LizardAttention` layers sharing their
    projections: a model to fine-tune (see the module docstring).

    The swapped model starts as the original wherever ``window`` covers the input (bit for bit, with the
    default ``linear_init=0``) and as sliding-window attention with sinks beyond it. ``kwargs`` go to
    :class:`LizardAttention` (``chunk``, ``gate_temperature``, ``gate_bias``, ``linear_init``). Reversible.
    """
    check_causal_window(window, sinks)
    implementation = model.config._attn_implementation
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={implementation!r} is not supported; use one of {SUPPORTED_IMPLEMENTATIONS} "
            "(and restore other attnctl patches first)"
        )
    hybrids, replacements = [], {}
    for layer in select_layers(model, layers):
        hybrid = LizardAttention.from_attention(
            layer.module,
            model.config.num_attention_heads,
            implementation,
            window=window,
            sinks=sinks,
            **kwargs,
        )
        replacements[parent_of(model, layer.name)] = hybrid
        hybrids.append(hybrid)
    return HybridPatch(swap_modules(replacements).restore, hybrids)
