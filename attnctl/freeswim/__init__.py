"""FreeSwim for Wan: inward sliding-window self-attention, dual-path cross-attention override and caching.

The window geometry and kernel are general and live in the core (:mod:`attnctl.core.windows`,
:mod:`attnctl.core.window_attention`); this package holds FreeSwim's settings, run state and controls, and the
``WanAttention`` processor they run in (:mod:`attnctl.freeswim.wan_processor`).
"""

from .config import ENTROPY, FreeSwimConfig, entropy_scale, native_window
from .controls import (
    CACHED,
    DUAL,
    WINDOW,
    FreeSwimState,
    FullBranchCrossAttention,
    WindowSelfAttention,
    freeswim_controls,
)

__all__ = [
    "CACHED",
    "DUAL",
    "ENTROPY",
    "WINDOW",
    "FreeSwimConfig",
    "FreeSwimState",
    "FullBranchCrossAttention",
    "WindowSelfAttention",
    "entropy_scale",
    "freeswim_controls",
    "native_window",
]
