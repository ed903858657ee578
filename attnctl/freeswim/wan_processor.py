"""A controlled attention processor for diffusers' ``WanAttention`` (self- and cross-attention, I2V included).

It runs Wan's own pre- and post-processing (diffusers' projection helpers for plain and fused projections, the
q/k RMS norms over all heads, interleaved rotary embedding, the image-context split of I2V models) and hands
the attention itself to the core's hook template with Wan's attention dispatch as the stock kernel.
So with no control acting it performs exactly the stock ``WanAttnProcessor`` operations (``torch.equal``
outputs), honouring ``set_attention_backend``.

``controller.installed(transformer)`` installs it through the core's registry (:mod:`attnctl.core.families`).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)

from ..core.controls import ControlSource
from ..core.dispatch import DispatchingProcessor, dispatch_bshd
from ..core.engine import CallHooks
from ..core.layers import LayerInfo
from ..core.processor import image_grid

TEXT_TOKENS = 512  # Wan's text context length; I2V models put the image tokens in front of it


def apply_wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (batch, tokens, heads, head_dim): rotate interleaved channel pairs (RoFormer)."""
    even, odd = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.type_as(hidden_states)


class ControlledWanAttnProcessor(DispatchingProcessor):
    """Processor for ``WanAttention`` on the core's hook template (:class:`~attnctl.core.engine.ControlledProcessor`).

    Control hooks honoured: ``cached_output``, ``logits_bias``, ``needs_probs``/``edit_logits``/``edit_probs``/
    ``observe``, ``kernel`` (text attention only; the I2V image term is added unchanged) and ``edit_output``.
    ``context`` (several key/value sets) is not supported on Wan layers and raises. The token grid is the
    transformer's patch grid, which the controller reads before every pass (``run.image_grid``).
    """

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch_size, query_tokens, _ = hidden_states.shape
        ulysses, ring = self._context_parallel_degrees() if encoder_hidden_states is None else (1, 1)
        tokens = query_tokens * ulysses * ring  # under context parallelism each rank holds 1/(ulysses * ring)
        call = self.make_call(attn, batch_size, tokens, image_grid(self.controller.run.image_grid, None, tokens))

        def body(hooks: CallHooks) -> torch.Tensor:
            return self._attention(hooks, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        return self.controlled(call, body)

    def _attention(self, hooks: CallHooks, attn: WanAttention, hidden_states, encoder_hidden_states,
                   attention_mask, rotary_emb) -> torch.Tensor:  # fmt: skip
        """Wan's projections, norms, rotary embedding and I2V image term around the hooked attention."""
        is_self_attention = encoder_hidden_states is None
        ulysses, ring = self._context_parallel_degrees() if is_self_attention else (1, 1)
        if ring > 1 and hooks.controls:
            raise ValueError(
                f"layer {self.layer.name}: attnctl controls need every token of a head on one rank; use "
                f"ContextParallelConfig(ulysses_degree=...) with ring_degree=1 (got ring_degree={ring})"
            )
        exchange = ulysses > 1 and bool(hooks.controls)  # the controls see all tokens of 1/ulysses of the heads
        if encoder_hidden_states is not None and hooks.context(encoder_hidden_states) is not None:
            raise ValueError(f"layer {self.layer.name}: context sets are not supported on WanAttention layers")

        image_context = None
        if attn.add_k_proj is not None:
            image_tokens = encoder_hidden_states.shape[1] - TEXT_TOKENS
            image_context = encoder_hidden_states[:, :image_tokens]
            encoder_hidden_states = encoder_hidden_states[:, image_tokens:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        # (batch, tokens, heads * head_dim) -> (batch, tokens, heads, head_dim)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = apply_wan_rotary(query, *rotary_emb), apply_wan_rotary(key, *rotary_emb)

        image_out = None
        if image_context is not None:
            key_img, value_img = _get_added_kv_projections(attn, image_context)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            image_out = dispatch_bshd(query, key_img, value_img, None, self._attention_backend)
            image_out = image_out.flatten(2, 3).type_as(query)

        if exchange:
            query, key, value = (ulysses_all_to_all(t, self._ulysses_group(), gather_tokens=True) for t in (query, key, value))
        # Wan passes the config for self-attention only; after the exchange the attention is local
        kernel = self.stock_kernel(parallel=is_self_attention and not exchange)
        # (batch, tokens, heads, dim) <-> (batch, heads, tokens, dim) for the engine, as views
        hidden_states = hooks.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                     attention_mask, default_kernel=kernel).transpose(1, 2)  # fmt: skip
        if exchange:
            hidden_states = ulysses_all_to_all(hidden_states, self._ulysses_group(), gather_tokens=False)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        if image_out is not None:
            hidden_states = hidden_states + image_out
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)

    def _context_parallel_degrees(self) -> tuple[int, int]:
        """(ulysses, ring) degrees of diffusers' context parallelism on this layer, (1, 1) without it.

        Ulysses gives each rank all tokens of some heads once exchanged, so controls run unchanged there; ring
        attention splits the keys across ranks, so a control acting on it is a ``ValueError`` rather than
        attention over one shard.
        """
        context = getattr(self._parallel_config, "context_parallel_config", None)
        return (1, 1) if context is None else (context.ulysses_degree, context.ring_degree)

    def _ulysses_group(self):
        return self._parallel_config.context_parallel_config._ulysses_mesh.get_group()


def ulysses_all_to_all(tensor: torch.Tensor, group, gather_tokens: bool) -> torch.Tensor:
    """Ulysses' exchange (Jacobs et al. 2023): (batch, tokens / P, heads, dim) <-> (batch, tokens, heads / P, dim).

    ``gather_tokens=True`` trades heads for tokens: rank r keeps heads ``[r H/P, (r + 1) H/P)`` of every token,
    tokens in rank order (diffusers' split of the sequence); ``False`` is the inverse.
    """
    world = torch.distributed.get_world_size(group)
    if gather_tokens:
        batch, tokens, heads, dim = tensor.shape
        # (batch, tokens/P, P, heads/P, dim) -> (P, tokens/P, batch, heads/P, dim): chunk p goes to rank p
        chunks = tensor.reshape(batch, tokens, world, heads // world, dim).permute(2, 1, 0, 3, 4).contiguous()
        received = torch.empty_like(chunks)
        torch.distributed.all_to_all_single(received, chunks, group=group)  # chunk p came from rank p's tokens
        return received.flatten(0, 1).permute(1, 0, 2, 3)  # (batch, tokens, heads/P, dim)
    batch, tokens, heads, dim = tensor.shape
    # (batch, P, tokens/P, heads/P, dim) -> (P, heads/P, batch, tokens/P, dim): token chunk p goes back to rank p
    chunks = tensor.reshape(batch, world, tokens // world, heads, dim).permute(1, 3, 0, 2, 4).contiguous()
    received = torch.empty_like(chunks)
    torch.distributed.all_to_all_single(received, chunks, group=group)  # chunk p holds rank p's heads
    return received.flatten(0, 1).permute(1, 2, 0, 3)  # (batch, tokens/P, heads, dim)


def wan_processor_factory(transformer: torch.nn.Module):
    """A ``processor_factory`` for :meth:`AttentionController.installed` on a ``WanTransformer3DModel``.

    ``installed`` finds this processor in the core's registry by itself; the factory remains for callers
    that name it explicitly.
    """

    def factory(controller: ControlSource, layer: LayerInfo, module: torch.nn.Module):
        if not isinstance(module, WanAttention):
            raise TypeError(f"layer {layer.name} is a {type(module).__name__}, not a WanAttention")
        return ControlledWanAttnProcessor(controller, layer, stock=module.processor)

    return factory
