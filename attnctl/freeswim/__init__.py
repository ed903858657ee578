"""FreeSwim for Wan: inward sliding-window self-attention, dual-path cross-attention override and caching.

The window geometry and kernel are general and live in the core (:mod:`attnctl.core.windows`,
:mod:`attnctl.core.window_attention`); this package holds FreeSwim's settings, run state and controls, and the
``WanAttention`` processor they run in (:mod:`attnctl.freeswim.wan_processor`).
"""

from .config import ENTROPY, FreeSwimConfig, entropy_scale, native_window
from .controls import (
    CACHED,
    DUAL,
    DUAL_ROWS,
    WINDOW,
    WINDOW_ROWS,
    FreeSwimState,
    FullBranchCrossAttention,
    WindowSelfAttention,
    freeswim_controls,
    freeswim_pass,
    pass_rows,
)

__all__ = [
    "CACHED",
    "DUAL",
    "DUAL_ROWS",
    "ENTROPY",
    "WINDOW",
    "WINDOW_ROWS",
    "FreeSwimConfig",
    "FreeSwimState",
    "FullBranchCrossAttention",
    "WindowSelfAttention",
    "entropy_scale",
    "freeswim_controls",
    "freeswim_pass",
    "native_window",
    "pass_rows",
]
