"""The control protocol: hook points where a method changes one attention call.

A control subclasses :class:`AttentionControl` and overrides only the hooks it needs. Every processor runs them
through one template, :class:`attnctl.core.engine.CallHooks`, in this order:

1. ``cached_output``  return a stored output and skip the call entirely (FreeSwim's cache);
2. ``context``        choose the encoder states that feed keys and values (structured guidance);
3. ``logits_bias``    an additive or boolean bias on the logits, fused into SDPA (region and window masks);
4. ``edit_logits``    rewrite materialised logits (self-attention injection);
5. ``edit_probs``     rewrite attention probabilities;
6. ``kernel``         compute attention another way (sliding windows);
7. ``observe``        read the probabilities (attention maps);
8. ``edit_output``    change or record the layer's output (FreeSwim's override).

Hooks 4, 5 and 7 need the probabilities, which the fused kernel never forms; a control asks for them with
``needs_probs`` on the layers where it wants them, so every other layer keeps the fused path.

The logits and probability hooks see the whole matrix of the call; in joint attention that is the
concatenated image-and-text sequence, and ``call.cross`` / ``call.joint_bias`` address its cross-attention
block. The output hooks (1 and 8) see the image stream's output, the tensor a UNet layer returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch

from .layers import LayerInfo
from .rows import BatchRows
from .run import RunState

# kernel(query, key, value, attn_mask) -> output, all in SDPA layout (batch, heads, tokens, head_dim)
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class AttentionCall:
    """What a control may know about the attention call in progress (a read-only view of the run).

    ``image_queries`` are the query positions of image tokens and ``text_keys`` the key positions of text
    tokens (None in self-attention). In cross-attention every query is an image token and every key a text
    token; in joint attention (SD3, Flux) both are ranges of the one concatenated sequence, and
    :meth:`cross` cuts the image-query x text-key block, the part of the logits that *is* cross-attention.
    """

    layer: LayerInfo
    module: torch.nn.Module | None
    run: RunState
    batch_size: int
    query_tokens: int
    grid: tuple[int, ...] | None  # (height, width) for image models, (frames, height, width) for video DiTs
    extras: dict[str, Any] = field(default_factory=dict)
    image_queries: slice = field(default_factory=lambda: slice(None))
    text_keys: slice | None = None

    def __post_init__(self) -> None:
        if self.text_keys is None and self.layer.is_cross and not self.layer.joint:
            self.text_keys = slice(None)  # plain cross-attention: every key is a text token

    @property
    def is_cross(self) -> bool:
        """Whether the call has text keys (cross-attention, or joint attention with a text stream)."""
        return self.text_keys is not None

    @property
    def is_joint(self) -> bool:
        return self.layer.joint

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def branch(self) -> str | None:
        """The pass's name: ``"cond"``/``"uncond"`` from ``cache_context``, or the pipeline's declared branch."""
        return self.run.branch

    @cached_property
    def rows(self) -> BatchRows | None:
        """The declared parts of this call's batch (None where the pipeline declared no layout)."""
        layout = self.run.row_layout
        return None if layout is None else layout(self.batch_size, self.branch)

    def cross(self, matrix: torch.Tensor) -> torch.Tensor:
        """(..., queries, keys) -> (..., image queries, text keys): the cross-attention block, as a view."""
        if self.text_keys is None:
            raise ValueError(f"layer {self.layer.name} has no text keys: it is self-attention")
        return matrix[..., self.image_queries, self.text_keys]

    def joint_bias(self, cross_bias: torch.Tensor, query_len: int, key_len: int) -> torch.Tensor:
        """Place a bias of the cross block (..., image queries, text keys) into the whole logits matrix.

        Booleans keep every other entry (True), float biases add zero there, so image-image, text-image and
        text-text attention stay stock.
        """
        fill = True if cross_bias.dtype == torch.bool else 0.0
        full = torch.full((*cross_bias.shape[:-2], query_len, key_len), fill, dtype=cross_bias.dtype,
                          device=cross_bias.device)  # fmt: skip
        self.cross(full).copy_(cross_bias)
        return full


class ControlSource(Protocol):
    """What a controlled processor needs from its controller: the run view and the controls of a call."""

    @property
    def run(self) -> RunState: ...

    def controls_for(self, call: AttentionCall) -> list[AttentionControl]: ...


@dataclass
class ContextSets:
    """Several encoder-state sets for one cross-attention call (Feng et al. 2023, Sec. 3.2).

    The layer computes ``sum_i kw_i softmax(Q K_i^T / sqrt(d)) (sum_j vw_j V_j)``: attention is linear in the
    values, so several value sets collapse into their weighted mean. ``key_weights`` and ``value_weights`` must
    sum to one over the set axis for every row; that keeps the projection biases exact.

    Shapes: ``keys`` (S_k, batch, tokens, dim), ``key_weights`` (S_k, batch), likewise for values.
    """

    keys: torch.Tensor
    key_weights: torch.Tensor
    values: torch.Tensor
    value_weights: torch.Tensor
    _mean_value: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("keys", "values"):
            sets, weights = getattr(self, name), getattr(self, name[:-1] + "_weights")
            if sets.ndim != 4 or weights.shape != sets.shape[:2]:
                raise ValueError(
                    f"{name} must be (sets, batch, tokens, dim) with weights (sets, batch); "
                    f"got {tuple(sets.shape)} and {tuple(weights.shape)}"
                )

    @classmethod
    def single(cls, context: torch.Tensor) -> ContextSets:
        ones = torch.ones(1, context.shape[0], dtype=context.dtype, device=context.device)
        return cls(context[None], ones, context[None], ones)

    def mean_value_context(self) -> torch.Tensor:
        """(batch, tokens, dim): the weighted mean of the value sets, the input of one value projection.

        Computed once per instance: every cross-attention layer of a call gets the same sets.
        """
        if self._mean_value is None:
            self._mean_value = torch.einsum("sbld,sb->bld", self.values, self.value_weights.to(self.values.dtype))
        return self._mean_value


class AttentionControl:
    """Base class: every hook is a no-op, so a control overrides only what it changes."""

    def applies_to(self, call: AttentionCall) -> bool:
        """Whether this control takes part in ``call`` at all."""
        return True

    def cached_output(self, call: AttentionCall) -> torch.Tensor | None:
        return None

    def context(self, call: AttentionCall, encoder_hidden_states: torch.Tensor) -> ContextSets | None:
        return None

    def logits_bias(self, call: AttentionCall, query_len: int, key_len: int) -> torch.Tensor | None:
        """Additive float bias or boolean keep-mask, broadcastable to (batch, heads, query_len, key_len)."""
        return None

    def needs_probs(self, call: AttentionCall) -> bool:
        return False

    def edit_logits(self, call: AttentionCall, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def kernel(self, call: AttentionCall) -> Kernel | None:
        return None

    def observe(self, call: AttentionCall, probs: torch.Tensor) -> None:
        return None

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        return output

    def reset(self) -> None:
        """Forget per-call state; the controller calls this when it is installed."""
        return None
