"""``--method compose``: PrimeComposer image composition (Wang et al., ACM MM 2024)."""

from __future__ import annotations

from typing import Any

from attnctl.checks import File, Integer, Optional, TextList, read_image
from attnctl.spec import Converter, MethodSpec, Param

#: Token ids are below this in every tokenizer attnctl meets (CLIP: 49408, T5: 32128).
MAX_TOKEN_ID = 2**31 - 1


def pipeline() -> type:
    from attnctl.pipelines.composer import PrimeComposerPipeline

    return PrimeComposerPipeline



def _image_field(field: str, argument: str) -> tuple[str, Any]:
    return field, Converter((argument,), lambda path: (read_image(field, path),))


SPEC = MethodSpec(
    "compose", "Composition", pipeline, "image",
    "PrimeComposer image composition",
    params=(
        Param("background", "background image", None, File("image"), default="required", is_path=True),
        Param("subject", "subject image", None, File("image"), default="required", is_path=True),
        Param("subject_mask", "subject segmentation mask (white marks the subject)", None, File("mask"),
              default="required", is_path=True),
        Param("box", "target box [x0, y0, x1, y1] in background pixels", "target_box", default="target_mask"),
        Param("target_mask", "target region mask (instead of box)", None, File("mask"), default="box",
              is_path=True),
        Param("subject_words", "the prompt's words naming the subject", "subject_words",
              TextList('["red circle"]'), default="required"),
        Param("domain", '"same": photo into photo; "cross": into a painting, sketch or cartoon', "domain",
              default='"same"'),
        Param("tau_a", "fraction of steps with attention injection", "tau_a", default="0.3"),
        Param("tau_b", "end of background blending (fraction of steps)", "tau_b", default="0.8"),
        Param("tau_c", "end of subject re-pasting (fraction of steps)", "tau_c", default="0.2"),
        Param("faithful", "reproduce the released code where it differs from the paper", "faithful",
              default="false"),
        Param("inversion_token_id", "token of the inversion prompt; null inverts with the empty prompt",
              "inversion_token_id", Optional(Integer(0, MAX_TOKEN_ID)),
              default="7788 where the vocabulary has it, else null"),
    ),
    converters=dict((
        _image_field("background", "image"),
        _image_field("subject", "subject_image"),
        _image_field("subject_mask", "subject_mask"),
        _image_field("target_mask", "target_mask"),
    )),
    capability="compose",
)
