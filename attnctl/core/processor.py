"""The controlled processor for diffusers' ``Attention`` modules in UNets (SD 1.x/2.x, SDXL) and PixArt.

It follows ``AttnProcessor2_0`` step for step (spatial norm, 4-D inputs, attention masks such as PixArt's T5
padding bias, group norm, cross-attention norm, q/k norms, output projection, residual, rescale) and, on a
layer whose stock processor is ``IPAdapterAttnProcessor2_0``, adds the IP-Adapter's image-prompt attention
exactly as that processor does (its weights, scales and masks). With no control acting on a call it runs the
very same operations as the stock processor, so outputs are bit-identical (``torch.equal``).
"""

from __future__ import annotations

import math

import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from .controls import ContextSets, ControlSource
from .engine import CallHooks, ControlledProcessor, sdpa
from .layers import LayerInfo, token_grid


def _heads(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)."""
    return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, heads, tokens, head_dim) -> (batch, tokens, heads * head_dim) in ``dtype``."""
    batch, heads, _, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)


def image_grid(run_grid: tuple[int, ...] | None, sample_hw: tuple[int, int] | None, tokens: int):
    """The token grid of a layer with ``tokens`` image positions: the transformer's patch grid when the
    denoiser has one (PixArt, SD3, Flux), else the UNet level whose size matches."""
    if run_grid is not None:
        return run_grid if math.prod(run_grid) == tokens else None
    return None if sample_hw is None else token_grid(tokens, sample_hw)


class ControlledAttnProcessor(ControlledProcessor):
    """Processor for ``diffusers.models.attention_processor.Attention`` driven by an attention controller.

    ``ip_adapter``: the layer's stock ``IPAdapterAttnProcessor2_0``, whose image-prompt term is kept. Its
    image tokens are not text keys: controls act on the text attention only, the adapter's term is added as
    the stock processor adds it.
    """

    def __init__(self, controller: ControlSource, layer: LayerInfo,
                 ip_adapter: IPAdapterAttnProcessor2_0 | None = None) -> None:  # fmt: skip
        super().__init__(controller, layer)
        self.ip_adapter = ip_adapter

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_masks: torch.Tensor | list | None = None,
    ) -> torch.Tensor:
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):  # (text, [ip tokens per adapter]) from an IP-Adapter UNet
            if self.ip_adapter is None:
                raise ValueError(f"layer {self.layer.name} got IP-Adapter image tokens but has no IP-Adapter")
            encoder_hidden_states, ip_states = encoder_hidden_states
        elif self.ip_adapter is not None and encoder_hidden_states is not None:
            raise ValueError(f"layer {self.layer.name} is an IP-Adapter layer but got no image tokens")

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
        run = self.controller.run
        grid = grid or image_grid(run.image_grid, run.sample_hw, query_tokens)
        call = self.make_call(attn, batch_size, query_tokens, grid)

        def body(hooks: CallHooks) -> torch.Tensor:
            out, query = self._attention(hooks, attn, hidden_states, encoder_hidden_states, attention_mask)
            if ip_states is not None:
                out = self._add_image_prompt(out, query, attn, ip_states, ip_adapter_masks)
            out = attn.to_out[1](attn.to_out[0](out))
            if input_ndim == 4:
                out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
            if attn.residual_connection:
                out = out + residual
            return out / attn.rescale_output_factor

        return self.controlled(call, body)

    def _attention(self, hooks: CallHooks, attn: Attention, hidden_states, encoder_hidden_states, attention_mask):
        """Projections, norms and the hooked attention: (batch, tokens, inner) before ``to_out``, and the
        queries (batch, heads, tokens, head_dim)."""
        batch_size = hidden_states.shape[0]
        if attention_mask is not None:
            key_tokens = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, key_tokens, batch_size)
            # (batch * heads, q, k) -> (batch, heads, q, k) for SDPA
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        raw_context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        sets = hooks.context(raw_context)

        def prepare(context: torch.Tensor) -> torch.Tensor:
            if encoder_hidden_states is not None and attn.norm_cross:
                return attn.norm_encoder_hidden_states(context)
            return context

        key_weights = None
        if sets is None:
            context = prepare(raw_context)
            key, value = attn.to_k(context), attn.to_v(context)
        else:
            key, value, key_weights = _project_sets(attn, sets, prepare, batch_size)

        heads = attn.heads
        query, value = _heads(query, batch_size, heads), _heads(value, batch_size, heads)
        if key.ndim == 4:  # several key sets: (sets, batch, tokens, inner)
            key = torch.stack([_heads(k, batch_size, heads) for k in key])
        else:
            key = _heads(key, batch_size, heads)
        if self.ip_adapter is None:  # IPAdapterAttnProcessor2_0 applies no q/k norm
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
        out = hooks.attend(query, key, value, attention_mask, key_weights)
        return _merge_heads(out, query.dtype), query

    def _add_image_prompt(self, hidden_states, query, attn: Attention, ip_states, masks) -> torch.Tensor:
        """``hidden_states + scale * SDPA(q, ip_k, ip_v)`` per adapter (and per masked image), as
        ``IPAdapterAttnProcessor2_0`` adds it."""
        adapter = self.ip_adapter
        if masks is None:
            masks = [None] * len(adapter.scale)
        elif not isinstance(masks, list):
            masks = list(masks.unsqueeze(1))  # (adapters, 1, h, w) tensor form
        if not len(masks) == len(adapter.scale) == len(ip_states):
            raise ValueError(f"ip_adapter_masks has {len(masks)} entries for {len(adapter.scale)} IP-Adapters "
                             f"and {len(ip_states)} image-token sets")  # fmt: skip
        batch_size = hidden_states.shape[0]

        def image_attention(states: torch.Tensor, to_k, to_v) -> torch.Tensor:
            key = _heads(to_k(states), batch_size, attn.heads)
            value = _heads(to_v(states), batch_size, attn.heads)
            return _merge_heads(sdpa(query, key, value, None), query.dtype)

        for states, scale, to_k, to_v, mask in zip(ip_states, adapter.scale, adapter.to_k_ip, adapter.to_v_ip, masks):
            if (all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0):
                continue
            if mask is None:
                hidden_states = hidden_states + scale * image_attention(states, to_k, to_v)
                continue
            scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
            for index in range(mask.shape[1]):
                term = image_attention(states[:, index], to_k, to_v)
                weight = IPAdapterMaskProcessor.downsample(mask[:, index], batch_size, term.shape[1], term.shape[2])
                hidden_states = hidden_states + scales[index] * (term * weight.to(query.dtype).to(query.device))
        return hidden_states


def _project_sets(attn: Attention, sets: ContextSets, prepare, batch_size: int):
    """Keys per key set; values through the mean-value identity (one projection when it is exact)."""
    if sets.keys.shape[1] != batch_size or sets.values.shape[1] != batch_size:
        raise ValueError(f"context sets cover {sets.keys.shape[1]} rows but the attention call has {batch_size}")
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


class StockAdapter(torch.nn.Module):
    """Holds a layer's stock IP-Adapter processor as a child module, so its weights move with the denoiser
    (``.to``, ``enable_model_cpu_offload``) while attnctl's processor is installed, and passes ``scale`` through
    to it, so diffusers' ``set_ip_adapter_scale`` and ``is_ip_adapter_active`` (which SD3's pipeline checks
    before encoding the image) act on the stock value. Subclasses also subclass the stock class for those checks.
    """

    def _hold(self, stock: torch.nn.Module) -> None:
        torch.nn.Module.__init__(self)
        self.ip_adapter = stock

    @property
    def scale(self):
        return self.ip_adapter.scale

    @scale.setter
    def scale(self, value) -> None:
        self.ip_adapter.scale = value


class ControlledIPAdapterAttnProcessor(ControlledAttnProcessor, StockAdapter, IPAdapterAttnProcessor2_0):
    """:class:`ControlledAttnProcessor` on a layer whose stock processor is ``IPAdapterAttnProcessor2_0``,
    holding that adapter as :class:`StockAdapter` does."""

    def __init__(self, controller: ControlSource, layer: LayerInfo, stock: IPAdapterAttnProcessor2_0) -> None:
        self._hold(stock)
        ControlledAttnProcessor.__init__(self, controller, layer, ip_adapter=stock)
