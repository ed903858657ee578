"""attnctl's core: one controlled attention processor, its control protocol, run state and map capture."""

from .controller import AttentionController
from .controls import AttentionCall, AttentionControl, ContextSets
from .engine import attend, combine_masks, sdpa
from .heatmaps import TokenHeatmaps, label_heatmaps
from .layers import LayerInfo, token_grid
from .processor import ControlledAttnProcessor
from .store import AttentionStore

__all__ = [
    "AttentionCall",
    "AttentionControl",
    "AttentionController",
    "AttentionStore",
    "ContextSets",
    "ControlledAttnProcessor",
    "LayerInfo",
    "TokenHeatmaps",
    "attend",
    "combine_masks",
    "label_heatmaps",
    "sdpa",
    "token_grid",
]
