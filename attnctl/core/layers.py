"""Names and geometry of the attention layers a controller wraps.

diffusers keys processors by dotted module path (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``,
``blocks.3.attn1.processor``). :class:`LayerInfo` parses those keys once, with a regex rather than string slicing, so
controls can select layers by block, depth and kind without knowing the model's naming scheme.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_BLOCK = re.compile(r"(?P<block>down_blocks|mid_block|up_blocks|blocks|transformer_blocks|single_transformer_blocks)"
                    r"(?:\.(?P<index>\d+))?")


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer: its processor key, position in the network and whether it reads text.

    ``is_cross`` is True for cross-attention and for joint attention with a text stream; ``joint`` tells the
    two apart (a joint layer's keys are image and text tokens, see :class:`~attnctl.core.controls.AttentionCall`).
    """

    name: str
    is_cross: bool
    place: str  # "down", "mid", "up" for UNets; "block" for DiTs; "other" when unknown
    block_index: int  # index of the enclosing block (-1 when unknown)
    order: int  # position among all attention layers, in the model's own order
    joint: bool = False  # joint attention over concatenated image and text tokens (SD3, Flux)

    @classmethod
    def from_name(cls, name: str, is_cross: bool, order: int, joint: bool = False) -> LayerInfo:
        match = _BLOCK.search(name)
        if match is None:
            return cls(name, is_cross, "other", -1, order, joint)
        block = match.group("block")
        place = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(block, "block")
        index = int(match.group("index")) if match.group("index") is not None else 0
        return cls(name, is_cross, place, index, order, joint)

    @property
    def module_path(self) -> str:
        """The dotted path of the attention module (the processor key without ``.processor``)."""
        return self.name.removesuffix(".processor")


def token_grid(num_tokens: int, sample_hw: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of a UNet layer whose feature map has ``num_tokens`` positions.

    UNets halve the latent with stride-2 convolutions (``ceil`` for odd sizes), so the grid is the latent size
    divided by the first power of two whose rounded-up product matches. Non-square latents are supported.
    """
    height, width = sample_hw
    factor = 1
    while factor <= max(height, width) * 2:
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        if grid[0] * grid[1] == num_tokens:
            return grid
        factor *= 2
    raise ValueError(
        f"num_tokens={num_tokens} is not a downsampled grid of the latent size {sample_hw}; "
        "the layer does not look like a UNet feature map"
    )
