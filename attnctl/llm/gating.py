"""Gated attention (Qiu et al. 2025, "Gated Attention for Large Language Models"): a head-specific sigmoid
gate on the attention output, applied after SDPA and before the output projection (the paper's position G1).

``Y' = Y * sigmoid(X W_g + b_g)``, with X the attention layer's input (after the pre-norm), one gate score
per head (``headwise``) or per head channel (``elementwise``). :func:`add_output_gates` adds the gate to a
pretrained model without changing its outputs at first: W_g = 0, b_g = ``init_bias`` and the score is
divided by the constant ``sigmoid(init_bias)``, so every gate starts at exactly 1. With the default
``init_bias=0`` the patched model is bit-identical to the original (``sigmoid(0) = 0.5`` is exact in every
float format); other values start within one float rounding of 1. The gate then ranges over
(0, 1/sigmoid(init_bias)), (0, 2) by default, and its gradient at the start is as large as a sigmoid's gets.

``bias=False`` drops b_g: ``sigmoid(X W_g)``, the paper's gate (its released code computes the gate scores in
the bias-free query projection). ``identity_init=False`` keeps PyTorch's default ``nn.Linear`` initialisation
(uniform in +-1/sqrt(hidden) for W_g and, with ``bias=True``, for b_g too) and no rescaling: scores in (0, 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .patching import AttentionPatch, select_layers, swap_modules

GATE_VARIANTS = ("headwise", "elementwise")


class AttentionOutputGate(nn.Module):
    """Gate scores from the layer input: (batch, tokens, hidden) -> (batch, tokens, heads, 1 | head_dim).

    ``identity_init=True`` starts every score at exactly 1 (W_g = 0, b_g = ``init_bias``, divided by
    ``sigmoid(init_bias)``); ``identity_init=False`` keeps ``nn.Linear``'s random initial W_g and b_g and
    gives scores in (0, 1). ``bias=False`` has no b_g (the paper's gate; ``init_bias`` must then be 0).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        variant: str = "headwise",
        identity_init: bool = False,
        init_bias: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if variant not in GATE_VARIANTS:
            raise ValueError(f"variant={variant!r} is not a gate variant; choose one of {GATE_VARIANTS}")
        if not bias and init_bias != 0:
            raise ValueError(f"init_bias={init_bias!r} needs a bias; pass bias=True or init_bias=0")
        self.variant, self.num_heads, self.head_dim = variant, num_heads, head_dim
        self.proj = nn.Linear(hidden_size, num_heads * (head_dim if variant == "elementwise" else 1), bias=bias)
        reference = torch.tensor(1.0)
        if identity_init:
            nn.init.zeros_(self.proj.weight)
            if bias:
                nn.init.constant_(self.proj.bias, init_bias)
            reference = torch.sigmoid(torch.tensor(float(init_bias)))
        self.register_buffer("reference", reference)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.proj(hidden_states)) / self.reference.to(hidden_states.dtype)
        return scores.view(*hidden_states.shape[:-1], self.num_heads, -1)  # (b, t, heads, 1 | head_dim)

    def apply_to(self, attention_output: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """Gate an attention output laid out as ``o_proj`` sees it: (batch, tokens, heads * head_dim)."""
        batch, tokens, _ = attention_output.shape
        per_head = attention_output.view(batch, tokens, self.num_heads, self.head_dim)  # (b, t, heads, d)
        return (per_head * self(hidden_states)).view(batch, tokens, -1)


class GatedOutputProjection(nn.Linear):
    """The attention layer's ``o_proj`` with the gate in front; it shares the original weight and bias.

    The gate input X is the attention module's ``hidden_states``, handed over by a forward pre-hook that
    :func:`add_output_gates` installs on the attention module and cleared again when the module returns.
    State-dict keys of the projection stay ``o_proj.weight``/``o_proj.bias``; the gate adds ``o_proj.gate.*``.
    """

    def __init__(self, projection: nn.Linear, gate: AttentionOutputGate) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = projection.in_features, projection.out_features
        self.weight = projection.weight
        self.bias = projection.bias
        self.gate = gate
        self.gate_input: torch.Tensor | None = None

    def forward(self, attention_output: torch.Tensor) -> torch.Tensor:
        if self.gate_input is None:
            raise RuntimeError(
                "the gated o_proj was called outside its attention module's forward; no gate input"
            )
        return F.linear(self.gate.apply_to(attention_output, self.gate_input), self.weight, self.bias)


class GatePatch(AttentionPatch):
    """What :func:`add_output_gates` returns: the gates; ``restore()`` puts the original ``o_proj`` back."""

    def __init__(self, undo, gates: list[AttentionOutputGate]) -> None:
        super().__init__(undo)
        self.gates = gates

    def parameters(self) -> Iterator[nn.Parameter]:
        """The gate parameters W_g, b_g of every gated layer, e.g. for an optimiser that trains them only."""
        for gate in self.gates:
            yield from gate.parameters()


def _hand_over_gate_input(projection: GatedOutputProjection):
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        projection.gate_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def post_hook(module: nn.Module, args: tuple, output: object) -> None:
        projection.gate_input = None

    return pre_hook, post_hook


def add_output_gates(
    model: PreTrainedModel,
    variant: str = "headwise",
    layers: Iterable[int] | None = None,
    identity_init: bool = True,
    init_bias: float = 0.0,
    bias: bool = True,
) -> GatePatch:
    """Put an :class:`AttentionOutputGate` before ``o_proj`` of the chosen attention layers (all by default).

    With ``identity_init`` (default) the patched model computes what the original does (exactly for
    ``init_bias=0``, with or without ``bias``). ``identity_init=False`` keeps the gates' random ``nn.Linear``
    initialisation (the model changes); ``bias=False`` is the paper's bias-free gate. The gates are trainable
    and live on the model while the patch is active; ``restore()`` removes them and puts the original
    projections back.
    """
    gates, replacements, handles = [], {}, []
    for layer in select_layers(model, layers):
        attention, projection = layer.module, layer.module.o_proj
        num_heads = model.config.num_attention_heads
        gate = AttentionOutputGate(
            attention.q_proj.in_features,
            num_heads,
            projection.in_features // num_heads,
            variant,
            identity_init,
            init_bias,
            bias,
        ).to(device=projection.weight.device, dtype=projection.weight.dtype)
        gated = GatedOutputProjection(projection, gate)
        pre_hook, post_hook = _hand_over_gate_input(gated)
        handles.append(attention.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(attention.register_forward_hook(post_hook, always_call=True))
        replacements[(attention, "o_proj")] = gated
        gates.append(gate)
    swap = swap_modules(replacements)

    def undo() -> None:
        for handle in handles:
            handle.remove()
        swap.restore()

    return GatePatch(undo, gates)
