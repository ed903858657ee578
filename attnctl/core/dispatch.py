"""diffusers' attention dispatch as an engine kernel, for processors whose stock version calls it (Flux, Wan).

``dispatch_attention_fn`` takes (batch, tokens, heads, head_dim); the engine works in SDPA's layout
(batch, heads, tokens, head_dim). The transposes are views, so the stock call is reproduced bit for bit and
``set_attention_backend`` / context parallelism reach the kernel as they reach the stock processor.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .controls import ControlSource, Kernel
from .engine import ControlledProcessor
from .layers import LayerInfo


def dispatch_bshd(query, key, value, attn_mask, backend=None, parallel_config=None) -> torch.Tensor:
    """The stock call, (batch, tokens, heads, head_dim) in and out."""
    return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                                 backend=backend, parallel_config=parallel_config)  # fmt: skip


def dispatch_kernel(backend=None, parallel_config=None) -> Kernel:
    """:func:`dispatch_bshd` in SDPA layout, as the default kernel of :func:`attnctl.core.engine.attend`."""

    def kernel(query, key, value, attn_mask):
        out = dispatch_bshd(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask,
                            backend, parallel_config)  # fmt: skip
        return out.transpose(1, 2)

    return kernel


class DispatchingProcessor(ControlledProcessor):
    """A controlled processor whose stock version calls the dispatch (Flux, Wan).

    Declares ``_attention_backend`` and ``_parallel_config`` as the stock class does (diffusers hands them only
    to processors that have the attributes, families.md trap 11) and starts from the stock instance's values.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, controller: ControlSource, layer: LayerInfo, stock: object | None = None) -> None:
        super().__init__(controller, layer)
        self._attention_backend = getattr(stock, "_attention_backend", None)
        self._parallel_config = getattr(stock, "_parallel_config", None)

    def stock_kernel(self, parallel: bool = True) -> Kernel:
        """The stock dispatch as the engine's default kernel (``parallel``: pass the context-parallel config)."""
        return dispatch_kernel(self._attention_backend, self._parallel_config if parallel else None)
