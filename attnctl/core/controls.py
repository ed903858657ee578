"""The control protocol: hook points where a method changes one attention call.

A control subclasses :class:`AttentionControl` and overrides only the hooks it needs. Hooks run in this order
inside :func:`attnctl.core.engine.attend` and the processors:

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .layers import LayerInfo

if TYPE_CHECKING:
    from .controller import AttentionController

# kernel(query, key, value, attn_mask) -> output, all in SDPA layout (batch, heads, tokens, head_dim)
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class AttentionCall:
    """What a control may know about the attention call in progress."""

    layer: LayerInfo
    module: torch.nn.Module
    controller: AttentionController
    batch_size: int
    query_tokens: int
    grid: tuple[int, ...] | None  # (height, width) for UNets, (frames, height, width) for video DiTs
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_cross(self) -> bool:
        return self.layer.is_cross

    @property
    def step(self) -> int:
        return self.controller.step

    @property
    def branch(self) -> str | None:
        """``"cond"``/``"uncond"`` where the pipeline runs the two guidance halves as separate passes."""
        return self.controller.branch


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
