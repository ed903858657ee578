"""``--method structured``: Structured Diffusion Guidance (Feng et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any

from attnctl.checks import TextList
from attnctl.spec import MethodSpec, Param


def pipeline() -> type:
    from attnctl.pipelines.structured import StructuredDiffusionPipeline

    return StructuredDiffusionPipeline


def phrases_record(output: Any) -> dict[str, Any]:
    """The phrases structured guidance used, with token spans, for the manifest."""
    return {"phrases": [{"text": p.text, "tokens": [p.token_start, p.token_end]} for p in output.phrases[0]]}


SPEC = MethodSpec(
    "structured", "Structured text-to-image", pipeline, "image",
    "Structured Diffusion Guidance (fields: phrases, struct_mode)",
    params=(
        Param("phrases", "noun phrases to encode instead of spaCy's parse (structured); one phrase per box "
              "(regional)", "phrases", TextList(), default="spaCy's parse"),
        Param("struct_mode", "structured mode; null = stock Stable Diffusion", "struct_mode", default='"values"'),
    ),
    record=phrases_record,
    capability="structured",
)
