"""Capture of cross-attention maps per token, for heat maps (as DAAM and prompt-to-prompt show them).

:class:`AttentionStore` is an *observe* control: on the cross-attention layers it selects it asks for the
probabilities, averages them over heads, resizes each layer's map to the latent grid and accumulates a
running mean over layers and steps. Only the selected layers pay for materialised probabilities.

On joint attention (SD3, Flux) it reads the image-query x text-key block (``call.cross``) and renormalises
each query's row over the text keys, so a map is, as in cross-attention, each pixel's distribution over the
text tokens. Image grids give maps (batch, text_tokens, height, width); video grids (Wan: frames x height x
width tokens) give (batch, text_tokens, frames, height, width), each frame resized like an image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .controls import AttentionCall, AttentionControl
from .layers import LayerInfo


class AttentionStore(AttentionControl):
    """Running mean of per-token cross-attention maps.

    Args:
        layer_filter: which cross-attention layers to record (default: all of them).
        max_tokens: skip layers whose query grid has more positions than this (the high-resolution layers
            dominate the cost of materialising probabilities and add little to token maps).
        steps: record only these step indices (default: every step).
    """

    def __init__(
        self,
        layer_filter: Callable[[LayerInfo], bool] | None = None,
        max_tokens: int | None = None,
        steps: set[int] | range | None = None,
    ) -> None:
        self.layer_filter = layer_filter
        self.max_tokens = max_tokens
        self.steps = steps
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None  # (batch, text_tokens, [frames,] height, width), float32
        self._count = 0

    def applies_to(self, call: AttentionCall) -> bool:
        if not call.is_cross or call.grid is None or len(call.grid) not in (2, 3):
            return False
        if self.layer_filter is not None and not self.layer_filter(call.layer):
            return False
        if self.max_tokens is not None and call.query_tokens > self.max_tokens:
            return False
        return self.steps is None or call.step in self.steps

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    def observe(self, call: AttentionCall, probs: torch.Tensor) -> None:
        maps = call.cross(probs).float().mean(dim=1)  # (batch, heads, q, text) -> (batch, q, text)
        if call.is_joint:  # the joint softmax also spans image keys: renormalise over the text keys
            maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)
        maps = maps.transpose(1, 2).unflatten(2, call.grid)  # (batch, text, [frames,] h, w)
        target = tuple(call.run.sample_hw or call.grid[-2:])
        if tuple(call.grid[-2:]) != target:
            maps = _resize_frames(maps, target, "bilinear")
        maps = maps.detach().cpu()
        if self._sum is None or self._sum.shape != maps.shape:
            self._sum, self._count = torch.zeros_like(maps), 0
        self._sum += maps
        self._count += 1

    @property
    def num_records(self) -> int:
        return self._count

    def maps(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(batch, text_tokens, height, width), or (batch, text_tokens, frames, height, width) on video: mean
        attention per token, optionally resized to ``size`` (height, width; every frame alike).

        Each pixel's values over the tokens sum to one (they are softmax rows); normalise per map for display.
        """
        if self._sum is None:
            raise RuntimeError("no cross-attention was recorded; run the model with the store installed first")
        maps = self._sum / self._count
        if size is not None and tuple(size) != tuple(maps.shape[-2:]):
            maps = _resize_frames(maps, tuple(size), "bicubic").clamp_min(0)
        return maps


def _resize_frames(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize the last two axes of (batch, text, [frames,] h, w) maps to ``size``."""
    flat = maps.flatten(1, -3)  # (batch, text * frames, h, w)
    resized = F.interpolate(flat, size=size, mode=mode, align_corners=False)
    return resized.unflatten(1, maps.shape[1:-2])
