"""Per-token heat maps of one image, labelled with the prompt's tokens (for the UI and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenHeatmaps:
    """Cross-attention maps of one generated image, one per prompt token (BOS, EOS and padding left out).

    ``maps`` is (tokens, height, width) at image size; values are the mean attention probability the
    token received at each pixel (over heads, layers and steps).
    """

    tokens: list[str]
    maps: torch.Tensor

    def span(self, start: int, end: int) -> torch.Tensor:
        """(height, width): summed map of tokens [start, end), e.g. a phrase's token span."""
        if not 0 <= start < end <= len(self.tokens):
            raise ValueError(f"span [{start}, {end}) is outside the {len(self.tokens)} prompt tokens")
        return self.maps[start:end].sum(0)

    def normalized(self) -> torch.Tensor:
        """Each map rescaled to [0, 1] independently, for display."""
        flat = self.maps.flatten(1)
        low, high = flat.min(1).values, flat.max(1).values
        scale = (high - low).clamp_min(1e-12)
        return (self.maps - low[:, None, None]) / scale[:, None, None]

