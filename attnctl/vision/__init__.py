"""attnctl.vision: local, routed and gated attention modules for vision transformers, and reversible
patches for Hugging Face ViT / CLIP vision towers (windowed attention for larger inputs, attention maps,
rollout).

Grid modules take channels-last token grids (batch, H, W, dim); CrossViT takes (batch, 1 + tokens, dim).
The patches import transformers and neighbourhood attention imports :mod:`attnctl.core` (whose package
loads diffusers), so both load lazily, on first use of their names: ``import attnctl.vision`` loads neither
transformers nor diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .biformer import BiLevelRoutingAttention, bilevel_routing_attention
from .convit import GatedPositionalSelfAttention
from .crossvit import ClsCrossAttention, CrossViTFusion
from .grid import FullGridAttention, GridSelfAttention
from .halo import HaloAttention2d, halo_attention
from .hilo import HiLoAttention
from .rollout import attention_rollout, cls_saliency

_LAZY = {
    **dict.fromkeys(
        (
            "AttentionMaps",
            "AttentionPatch",
            "VisionTower",
            "WindowedAttention",
            "find_vision_tower",
            "record_attention",
            "windowed_attention",
        ),
        "attnctl.vision.patches",
    ),
    **dict.fromkeys(
        ("NeighborhoodAttention2d", "cls_window_attention", "neighborhood_attention"),
        "attnctl.vision.neighborhood",
    ),
}

__all__ = [
    "BiLevelRoutingAttention",
    "ClsCrossAttention",
    "CrossViTFusion",
    "FullGridAttention",
    "GatedPositionalSelfAttention",
    "GridSelfAttention",
    "HaloAttention2d",
    "HiLoAttention",
    "attention_rollout",
    "bilevel_routing_attention",
    "cls_saliency",
    "halo_attention",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnctl.vision' has no attribute {name!r}")
