"""attnctl: training-free attention control for diffusion models, on Hugging Face diffusers.

Pipelines are imported lazily (``from attnctl import StructuredDiffusionPipeline``) so that the light parts
of the package (phrase parsing, window geometry) load without importing diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StructuredDiffusionPipeline": "attnctl.pipelines.structured",
    "StructuredDiffusionPipelineOutput": "attnctl.pipelines.structured",
    "StructuredDiffusionXLPipeline": "attnctl.pipelines.structured",
    "StructuredPixArtSigmaPipeline": "attnctl.pipelines.structured",
    "StructuredStableDiffusion3Pipeline": "attnctl.pipelines.structured",
    "StructuredFluxPipeline": "attnctl.pipelines.structured",
    "FreeSwimPipeline": "attnctl.pipelines.freeswim",
    "FreeSwimPipelineOutput": "attnctl.pipelines.freeswim",
    "FreeSwimImageToVideoPipeline": "attnctl.pipelines.freeswim",
    "FreeSwimVACEPipeline": "attnctl.pipelines.freeswim",
    "PrimeComposerPipeline": "attnctl.pipelines.composer",
    "PrimeComposerPipelineOutput": "attnctl.pipelines.composer",
    "PrimeComposerXLPipeline": "attnctl.pipelines.composer",
    "RegionalDiffusionPipeline": "attnctl.pipelines.regional",
    "RegionalDiffusionPipelineOutput": "attnctl.pipelines.regional",
    "RegionalDiffusionXLPipeline": "attnctl.pipelines.regional",
    "RegionalPixArtSigmaPipeline": "attnctl.pipelines.regional",
    "RegionalStableDiffusion3Pipeline": "attnctl.pipelines.regional",
    "RegionalFluxPipeline": "attnctl.pipelines.regional",
    "AttendAndExcitePipeline": "attnctl.pipelines.attend_excite",
    "AttendAndExciteXLPipeline": "attnctl.pipelines.attend_excite",
    "AttendAndExcitePixArtSigmaPipeline": "attnctl.pipelines.attend_excite",
    "AttendAndExcitePipelineOutput": "attnctl.pipelines.attend_excite",
    "SynGenPipeline": "attnctl.pipelines.syngen",
    "SynGenXLPipeline": "attnctl.pipelines.syngen",
    "SynGenPixArtSigmaPipeline": "attnctl.pipelines.syngen",
    "SynGenPipelineOutput": "attnctl.pipelines.syngen",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnctl' has no attribute {name!r}")
