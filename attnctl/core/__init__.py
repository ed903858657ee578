"""attnctl's core: the controlled processors, their control protocol, run state and map capture.

Names are imported lazily, so ``import attnctl.core.windows`` (the window kernels, used by ``attnctl.llm`` and
``attnctl.vision``) does not import diffusers.
"""

from __future__ import annotations

from attnctl._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        ".controls": ("AttentionCall", "AttentionControl", "ContextSets"),
        ".controller": ("AttentionController",),
        ".store": ("AttentionStore",),
        ".rows": ("BatchRows", "guidance_rows", "stacked"),
        ".engine": ("CallHooks", "ControlledProcessor", "attend", "combine_masks", "sdpa"),
        ".processor": ("ControlledAttnProcessor",),
        ".joint": ("ControlledFluxAttnProcessor", "ControlledJointAttnProcessor"),
        ".layers": ("LayerInfo", "token_grid"),
        ".run": ("RunState",),
        ".heatmaps": ("TokenHeatmaps",),
    },
)
