"""The controlled processor for diffusers' UNet ``Attention`` modules.

It follows ``AttnProcessor2_0`` step for step (spatial norm, 4-D inputs, attention masks, group norm,
cross-attention norm, q/k norms, output projection, residual, rescale) and calls the controls at the hook
points of :mod:`attnctl.core.controls`. With no control acting on a call it runs the very same operations as
the stock processor, so outputs are bit-identical (``torch.equal``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.models.attention_processor import Attention

from .controls import AttentionCall, ContextSets
from .engine import attend
from .layers import LayerInfo, token_grid

if TYPE_CHECKING:
    from .controller import AttentionController


def _heads(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)."""
    return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


class ControlledAttnProcessor:
    """Processor for ``diffusers.models.attention_processor.Attention`` driven by an :class:`AttentionController`.

    Per-call state lives in the controller, never in ``cross_attention_kwargs``: diffusers drops keyword
    arguments a processor does not declare, so this signature declares exactly the stock ones.
    """

    def __init__(self, controller: AttentionController, layer: LayerInfo) -> None:
        self.controller = controller
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        grid = None
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            grid = (height, width)

        batch_size, query_tokens, _ = hidden_states.shape
        if grid is None and self.controller.sample_hw is not None:
            grid = token_grid(query_tokens, self.controller.sample_hw)
        call = AttentionCall(self.layer, attn, self.controller, batch_size, query_tokens, grid)
        controls = self.controller.controls_for(call)
        cached = next((out for c in controls if (out := c.cached_output(call)) is not None), None)
        if cached is not None:
            return cached

        sequence_length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # (batch * heads, q, k) -> (batch, heads, q, k) for SDPA
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        raw_context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        sets = next((s for c in controls if (s := c.context(call, raw_context)) is not None), None)

        def prepare(context: torch.Tensor) -> torch.Tensor:
            if encoder_hidden_states is not None and attn.norm_cross:
                return attn.norm_encoder_hidden_states(context)
            return context

        key_weights = None
        if sets is None:
            context = prepare(raw_context)
            key, value = attn.to_k(context), attn.to_v(context)
        else:
            key, value, key_weights = self._project_sets(attn, sets, prepare, batch_size)

        heads = attn.heads
        query = _heads(query, batch_size, heads)
        value = _heads(value, batch_size, heads)
        if key.ndim == 4:  # several key sets: (sets, batch, tokens, inner)
            key = torch.stack([_heads(k, batch_size, heads) for k in key])
        else:
            key = _heads(key, batch_size, heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = attend(call, controls, query, key, value, attention_mask, key_weights)

        # (batch, heads, tokens, head_dim) -> (batch, tokens, heads * head_dim)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, heads * query.shape[-1])
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor

        for control in controls:
            hidden_states = control.edit_output(call, hidden_states)
        return hidden_states

    @staticmethod
    def _project_sets(attn: Attention, sets: ContextSets, prepare, batch_size: int):
        """Keys per key set; values through the mean-value identity (one projection when it is exact)."""
        if sets.keys.shape[1] != batch_size or sets.values.shape[1] != batch_size:
            raise ValueError(
                f"context sets cover {sets.keys.shape[1]} rows but the attention call has {batch_size}"
            )
        if sets.keys.shape[0] == 1:
            key, key_weights = attn.to_k(prepare(sets.keys[0])), None
        else:
            key, key_weights = torch.stack([attn.to_k(prepare(k)) for k in sets.keys]), sets.key_weights
        if sets.values.shape[0] == 1:
            value = attn.to_v(prepare(sets.values[0]))
        elif attn.norm_cross:  # a norm sits between the context and the projection: average after it
            weights = sets.value_weights.to(sets.values.dtype)[..., None, None]
            value = (torch.stack([attn.to_v(prepare(v)) for v in sets.values]) * weights).sum(0)
        else:  # to_v is affine and the weights sum to one: mean of projections = projection of the mean
            value = attn.to_v(sets.mean_value_context())
        return key, value, key_weights
