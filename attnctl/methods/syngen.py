"""``--method syngen``: SynGen (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models")."""

from __future__ import annotations

from typing import Any

from attnctl.spec import MethodSpec, Param


def pipeline() -> type:
    from attnctl.pipelines.syngen import SynGenPipeline

    return SynGenPipeline


def sets_record(output: Any) -> dict[str, Any]:
    """The modifier-noun sets SynGen bound, for the manifest."""
    return {"modifier_sets": [{"noun": s.noun.text, "modifiers": [m.text for m in s.modifiers]}
                              for s in output.modifier_sets[0]]}


SPEC = MethodSpec(
    "syngen", "SynGen", pipeline, "image",
    "SynGen, modifier-noun binding by attention alignment",
    params=(
        Param("syngen_step_size", "gradient step size (0 = stock)", "syngen_step_size", default="20"),
        Param("num_intervention_steps", "steps with a latent update", "num_intervention_steps", default="25"),
    ),
    record=sets_record,
    capability="binding",
)
