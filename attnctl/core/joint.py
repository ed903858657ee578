"""Controlled processors for joint attention: SD3/3.5 (``JointAttnProcessor2_0``) and Flux (``FluxAttnProcessor``).

Joint attention runs one softmax over the concatenation of image and text tokens. The order differs by family
(families.md trap 8): SD3 concatenates ``[image, text]``, Flux ``[text, image]`` (and a Flux double block still
returns ``(image, text)``). Each processor tells its calls where the image queries and the text keys sit
(``call.image_queries``, ``call.text_keys``), so a control addresses the cross-attention block, image queries x
text keys, with ``call.cross`` whatever the order.

With no control acting, each processor runs the very operations of its stock processor (``torch.equal``).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, _get_qkv_projections

from .dispatch import DispatchingProcessor
from .engine import CallHooks, ControlledProcessor
from .processor import _heads, _merge_heads, image_grid


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
            query, key, value = (_heads(p(hidden_states), batch_size, attn.heads)
                                 for p in (attn.to_q, attn.to_k, attn.to_v))  # fmt: skip
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
            return image, attn.to_add_out(text_out.contiguous())

        return self.controlled(call, body, pair=encoder_hidden_states is not None)
