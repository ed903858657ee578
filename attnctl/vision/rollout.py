"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

Each layer's attention is averaged over heads and mixed with the identity for the residual connection,
``A~ = 0.5 A + 0.5 I`` (rows renormalised); the rollout is the product ``A~_L ... A~_1``: row i says how much
each input token flows into output token i. The CLS row over the patch tokens is the usual saliency map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attention_rollout(attentions: Sequence[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Rollout of per-layer attentions, first layer first: each (batch, heads, N, N) -> (batch, N, N).

    Works with Hugging Face ``outputs.attentions`` or :class:`~attnctl.vision.patches.AttentionMaps`.
    ``residual=False`` multiplies the raw head-averaged maps (the paper's ablation without the identity).
    """
    if len(attentions) == 0:
        raise ValueError("attentions is empty: pass at least one layer's (batch, heads, N, N) probabilities")
    shape = attentions[0].shape
    for index, layer in enumerate(attentions):
        if layer.ndim != 4 or layer.shape[-1] != layer.shape[-2] or layer.shape != shape:
            raise ValueError(
                f"attentions[{index}] must be (batch, heads, N, N) like attentions[0] {tuple(shape)}; "
                f"got {tuple(layer.shape)}"
            )
    identity = torch.eye(shape[-1], dtype=torch.float32, device=attentions[0].device)
    rollout = identity.expand(shape[0], -1, -1)
    for layer in attentions:
        mixed = layer.float().mean(dim=1)  # (batch, N, N): heads averaged
        if residual:
            mixed = 0.5 * mixed + 0.5 * identity
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout


def cls_saliency(rollout: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The CLS row of a (batch, 1+H*W, 1+H*W) rollout over the patch tokens, as a (batch, H, W) map."""
    if rollout.ndim != 3 or rollout.shape[-1] != 1 + grid[0] * grid[1]:
        raise ValueError(
            f"rollout must be (batch, 1 + H*W, 1 + H*W) for grid={grid}, got {tuple(rollout.shape)}"
        )
    return rollout[:, 0, 1:].reshape(rollout.shape[0], grid[0], grid[1])
