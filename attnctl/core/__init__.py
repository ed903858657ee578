"""attnctl's core: the controlled processors, their control protocol, run state and map capture.

Names are imported lazily, so ``import attnctl.core.windows`` (the window kernels, used by ``attnctl.llm`` and
``attnctl.vision``) does not import diffusers.
"""

from __future__ import annotations

from attnctl._lazy import lazy_getattr

_LAZY = {
    "AttentionCall": ".controls",
    "AttentionControl": ".controls",
    "ContextSets": ".controls",
    "AttentionController": ".controller",
    "AttentionStore": ".store",
    "BatchRows": ".rows",
    "CallHooks": ".engine",
    "ControlledAttnProcessor": ".processor",
    "ControlledFluxAttnProcessor": ".joint",
    "ControlledJointAttnProcessor": ".joint",
    "ControlledProcessor": ".engine",
    "LayerInfo": ".layers",
    "RunState": ".run",
    "TokenHeatmaps": ".heatmaps",
    "attend": ".engine",
    "combine_masks": ".engine",
    "guidance_rows": ".rows",
    "sdpa": ".engine",
    "stacked": ".rows",
    "token_grid": ".layers",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
