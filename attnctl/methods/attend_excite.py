"""``--method attend-excite``: Attend-and-Excite (Chefer et al., SIGGRAPH 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnctl.checks import Json
from attnctl.spec import Converter, MethodSpec, Param


def pipeline() -> type:
    from attnctl.pipelines.attend_excite import AttendAndExcitePipeline

    return AttendAndExcitePipeline


def loop_indices(levels: Mapping[str, Any]) -> tuple[dict[int, Any]]:
    """JSON's string keys (``{"0": 0.05}``) as the loop indices ``thresholds`` takes (``{0: 0.05}``)."""
    indices = {}
    for key, level in levels.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise ValueError(f"thresholds key {key!r} is not a loop index (a whole number >= 0, e.g. \"10\")")
        indices[int(key)] = level
    return (indices,)


def subjects_record(output: Any) -> dict[str, Any]:
    """The subject token indices Attend-and-Excite excited, for the manifest."""
    return {"token_indices": [list(subject) for subject in output.token_indices[0]]}


SPEC = MethodSpec(
    "attend-excite", "Attend-and-Excite", pipeline, "image",
    "Attend-and-Excite",
    params=(
        Param("token_indices", "subject key positions (CLIP: start token 0, first word 1; T5: first word 0)", "token_indices",
              Json(list, "[2, 5]"), default="the nouns heading the parsed noun phrases"),
        Param("max_iter_to_alter", "steps with a latent update", "max_iter_to_alter", default="25"),
        Param("scale_factor", "gradient step size (0 = stock)", "scale_factor", default="20"),
        Param("thresholds", "loop index -> attention every subject must reach there (refinement)", None,
              Json(dict, '{"0": 0.05, "10": 0.5, "20": 0.8}'), default='{"0": 0.05, "10": 0.5, "20": 0.8}'),
    ),
    converters={"thresholds": Converter(("thresholds",), loop_indices)},
    record=subjects_record,
    capability="binding",
)
