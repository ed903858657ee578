"""Controlled processors for joint attention: SD3/3.5 (``JointAttnProcessor2_0``) and Flux (``FluxAttnProcessor``),
and their IP-Adapter versions (``SD3IPAdapterJointAttnProcessor2_0``, ``FluxIPAdapterAttnProcessor``).

Joint attention runs one softmax over the concatenation of image and text tokens. The order differs by family
(families.md trap 8): SD3 concatenates ``[image, text]``, Flux ``[text, image]`` (and a Flux double block still
returns ``(image, text)``). Each processor tells its calls where the image queries and the text keys sit
(``call.image_queries``, ``call.text_keys``), so a control addresses the cross-attention block, image queries x
text keys, with ``call.cross`` whatever the order.

With no control acting, each processor runs the very operations of its stock processor (``torch.equal``).

**IP-Adapter rule.** An IP-Adapter's image tokens are never text keys. Both families attend to them in a
separate attention of the image queries (SD3: over ``[image keys, IP keys]``; Flux: over the IP keys alone),
whose output the stock processor adds to the image stream (SD3: before ``to_out``, times its scale; Flux:
returned as a third output, which the block adds after its feed-forward). Controls act on the joint attention
only (its image-query x text-key block); the IP-Adapter's term is computed with the adapter's own weights and
added exactly as the stock processor adds it, whatever the controls do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import Attention, SD3IPAdapterJointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import (
    FluxAttention,
    FluxIPAdapterAttnProcessor,
    _get_qkv_projections,
)

from .controls import ControlSource
from .dispatch import DispatchingProcessor, dispatch_bshd
from .engine import CallHooks, ControlledProcessor, sdpa
from .layers import LayerInfo
from .processor import StockAdapter, _heads, _merge_heads, image_grid

# (image stream before its output projection, raw image query, key, value) -> image stream with the adapter's term
SD3ImagePrompt = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _refuse_context(hooks: CallHooks, states: torch.Tensor | None) -> None:
    if states is not None and hooks.context(states) is not None:
        raise ValueError(f"layer {hooks.call.layer.name}: context sets are not supported on joint attention; "
                         "edit the text keys' logits, probabilities or the kernel instead")  # fmt: skip


class ControlledJointAttnProcessor(ControlledProcessor):
    """SD3/3.5 joint attention (``JointAttnProcessor2_0``): sequence ``[image, text]``, returns ``(image, text)``.

    Also serves SD3.5's image-only ``attn2`` (no text stream: plain self-attention, one output) and the last
    block, whose ``context_pre_only`` text output skips ``to_add_out``. The stock processor ignores
    ``attention_mask``; so does this one.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        return self._joint(attn, hidden_states, encoder_hidden_states)

    def _joint(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
               image_prompt: SD3ImagePrompt | None = None):  # fmt: skip
        """The joint attention through the hooks; ``image_prompt`` adds an IP-Adapter's term before ``to_out``."""
        batch_size, image_tokens, _ = hidden_states.shape
        text_tokens = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        run = self.controller.run
        call = self.make_call(
            attn, batch_size, image_tokens + text_tokens, image_grid(run.image_grid, run.sample_hw, image_tokens),
            image_queries=slice(0, image_tokens),
            text_keys=slice(image_tokens, image_tokens + text_tokens) if text_tokens else None,
        )

        def body(hooks: CallHooks):
            _refuse_context(hooks, encoder_hidden_states)
            raw = [_heads(p(hidden_states), batch_size, attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v)]
            query, key, value = raw  # (batch, heads, image, head_dim)
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            if encoder_hidden_states is not None:
                text = [_heads(p(encoder_hidden_states), batch_size, attn.heads)
                        for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]  # fmt: skip
                if attn.norm_added_q is not None:
                    text[0] = attn.norm_added_q(text[0])
                if attn.norm_added_k is not None:
                    text[1] = attn.norm_added_k(text[1])
                # (batch, heads, image + text, head_dim): image first
                query, key, value = (torch.cat([a, b], dim=2) for a, b in zip((query, key, value), text))
            out = _merge_heads(hooks.attend(query, key, value), query.dtype)
            image, text_out = out[:, :image_tokens], out[:, image_tokens:]
            if image_prompt is not None:
                image = image_prompt(image, *raw)
            image = attn.to_out[1](attn.to_out[0](image))
            if encoder_hidden_states is None:
                return image
            if not attn.context_pre_only:
                text_out = attn.to_add_out(text_out)
            return image, text_out

        return self.controlled(call, body, pair=encoder_hidden_states is not None)


class ControlledFluxAttnProcessor(DispatchingProcessor):
    """Flux attention (``FluxAttnProcessor``): double-stream blocks get text and image apart, concatenate
    ``[text, image]`` and return ``(image, text)``; single-stream blocks get ``[text; image]`` already joined,
    with no text length, which the controller learns from ``txt_ids`` in a pre-hook on the transformer
    (``run.text_tokens``). Rotary embeddings, fused projections, q/k RMS norms, the attention dispatch
    (``set_attention_backend``, context parallelism) and ``attention_mask`` work as in the stock processor.
    """

    def __call__(
        self,
        attn: FluxAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        return self._flux(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def _flux(self, attn: FluxAttention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
              attention_mask: torch.Tensor | None, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
              image_prompt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):  # fmt: skip
        """The attention through the hooks; on a double block ``image_prompt(image, image_query)`` gives an
        IP-Adapter's term, returned third as the stock IP-Adapter processor returns it."""
        batch_size, tokens, _ = hidden_states.shape
        run = self.controller.run
        if encoder_hidden_states is not None:
            text_tokens, image_tokens = encoder_hidden_states.shape[1], tokens
        else:
            text_tokens = run.text_tokens
            if text_tokens is None:
                raise ValueError(f"layer {self.layer.name}: the text length of Flux's single-stream blocks comes "
                                 "from txt_ids; run the transformer with the controller installed on it")  # fmt: skip
            image_tokens = tokens - text_tokens
        call = self.make_call(
            attn, batch_size, text_tokens + image_tokens, image_grid(run.image_grid, None, image_tokens),
            image_queries=slice(text_tokens, text_tokens + image_tokens), text_keys=slice(0, text_tokens),
        )

        def body(hooks: CallHooks):
            _refuse_context(hooks, encoder_hidden_states)
            query, key, value, text_query, text_key, text_value = _get_qkv_projections(
                attn, hidden_states, encoder_hidden_states
            )
            # (batch, tokens, heads * head_dim) -> (batch, tokens, heads, head_dim)
            query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
            query, key = attn.norm_q(query), attn.norm_k(key)
            image_query = query  # (batch, image, heads, head_dim): normed, before rotary embedding
            if attn.added_kv_proj_dim is not None:
                text_query, text_key, text_value = (
                    t.unflatten(-1, (-1, attn.head_dim)) for t in (text_query, text_key, text_value)
                )
                text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
                # text first
                query, key, value = (torch.cat([a, b], dim=1) for a, b in zip((text_query, text_key, text_value),
                                                                              (query, key, value)))  # fmt: skip
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
            out = hooks.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask,
                               default_kernel=self.stock_kernel()).transpose(1, 2)  # fmt: skip
            out = out.flatten(2, 3).to(query.dtype)
            if encoder_hidden_states is None:
                return out
            text_out, image = out.split_with_sizes([text_tokens, image_tokens], dim=1)
            image = attn.to_out[1](attn.to_out[0](image.contiguous()))
            text_out = attn.to_add_out(text_out.contiguous())
            if image_prompt is None:
                return image, text_out
            return image, text_out, image_prompt(image, image_query)

        return self.controlled(call, body, pair=encoder_hidden_states is not None)


class ControlledSD3IPAdapterProcessor(ControlledJointAttnProcessor, StockAdapter, SD3IPAdapterJointAttnProcessor2_0):
    """SD3/3.5 joint attention with an IP-Adapter (``SD3IPAdapterJointAttnProcessor2_0``, InstantX's SD3.5
    adapter): the joint attention goes through the hooks, the adapter's term is the stock one (module rule).

    The adapter's term: image queries and keys RMS-normed by the adapter's ``norm_q``/``norm_k`` (not the
    layer's), the image tokens normed with the timestep (``norm_ip``) and projected to keys (normed) and values,
    one softmax over ``[image keys, IP keys]``, times ``scale``.
    """

    def __init__(self, controller: ControlSource, layer: LayerInfo, stock: SD3IPAdapterJointAttnProcessor2_0) -> None:
        self._hold(stock)
        ControlledJointAttnProcessor.__init__(self, controller, layer)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ip_hidden_states: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ):
        adapter = self.ip_adapter
        if adapter.scale == 0 or ip_hidden_states is None:  # the stock processor is then JointAttnProcessor2_0
            return self._joint(attn, hidden_states, encoder_hidden_states)

        def image_prompt(image, query, key, value):
            batch = image.shape[0]
            tokens = adapter.norm_ip(ip_hidden_states, temb=temb)  # (batch, ip_tokens, inner)
            ip_key, ip_value = (_heads(p(tokens), batch, attn.heads) for p in (adapter.to_k_ip, adapter.to_v_ip))
            query = adapter.norm_q(query)
            key = torch.cat([adapter.norm_k(key), adapter.norm_ip_k(ip_key)], dim=2)  # (batch, heads, image + ip, d)
            value = torch.cat([value, ip_value], dim=2)
            return image + _merge_heads(sdpa(query, key, value, None), query.dtype) * adapter.scale

        return self._joint(attn, hidden_states, encoder_hidden_states, image_prompt)


class ControlledFluxIPAdapterProcessor(ControlledFluxAttnProcessor, StockAdapter, FluxIPAdapterAttnProcessor):
    """Flux attention with IP-Adapters (``FluxIPAdapterAttnProcessor``, on the double-stream blocks): the joint
    attention goes through the hooks; the adapters' term (image queries, normed and before the rotary
    embedding, over each adapter's keys, summed with its scale) is the stock one, returned third (module rule).

    ``ip_adapter_masks`` is accepted and ignored, as the stock processor ignores it.
    """

    def __init__(self, controller: ControlSource, layer: LayerInfo, stock: FluxIPAdapterAttnProcessor) -> None:
        self._hold(stock)
        ControlledFluxAttnProcessor.__init__(self, controller, layer, stock)

    def __call__(
        self,
        attn: FluxAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ip_hidden_states: list[torch.Tensor] | None = None,
        ip_adapter_masks: torch.Tensor | None = None,
    ):
        adapter = self.ip_adapter
        if encoder_hidden_states is not None and ip_hidden_states is None:
            raise ValueError(f"layer {self.layer.name} is an IP-Adapter layer but got no ip_hidden_states: pass "
                             "ip_adapter_image or ip_adapter_image_embeds to the pipeline")  # fmt: skip

        def image_prompt(image, query):
            batch = image.shape[0]
            out = torch.zeros_like(image)  # (batch, image, inner)
            for tokens, scale, to_k, to_v in zip(ip_hidden_states, adapter.scale, adapter.to_k_ip, adapter.to_v_ip):
                ip_key, ip_value = (p(tokens).view(batch, -1, attn.heads, attn.head_dim) for p in (to_k, to_v))
                part = dispatch_bshd(query, ip_key, ip_value, None, self._attention_backend, self._parallel_config)
                out += scale * part.reshape(batch, -1, attn.heads * attn.head_dim).to(query.dtype)
            return out

        return self._flux(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, image_prompt)
