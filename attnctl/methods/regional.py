"""``--method regional``: layout-guided text-to-image, each phrase confined to its box (region-constrained
cross-attention, PrimeComposer's text-only variant)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnctl.checks import Boxes, Choice, Number, NumberList, Text, TextList
from attnctl.spec import MethodSpec, Param

#: ``attnctl.layout.MODES`` and ``SPECIAL_MASKS``, repeated so the spec stays free of torch (a test ties them).
LAYOUT_MODES = ("forbid", "bias", "prompts", "guidance")
SPECIAL_MASKS = ("off", "boxes", "all")


def pipeline() -> type:
    from attnctl.pipelines.regional import RegionalDiffusionPipeline

    return RegionalDiffusionPipeline


def regions(kwargs: dict[str, Any], fields: Mapping[str, Any], pipe: Any) -> dict[str, Any]:
    """``phrases`` + pixel ``boxes`` -> ``regions=[(phrase, normalised box), ...]`` for RegionalDiffusionPipeline.

    Boxes are in pixels of the output image (``size``, else the model's default size) and are normalised to
    [0, 1] as the pipeline takes them.
    """
    phrases, boxes = fields.get("phrases"), fields.get("boxes")
    if phrases is None and boxes is None:
        return kwargs
    if phrases is None or boxes is None or len(phrases) != len(boxes):
        raise ValueError(
            f"regional: phrases ({0 if phrases is None else len(phrases)}) and boxes "
            f"({0 if boxes is None else len(boxes)}) must come together, one box per phrase"
        )
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = kwargs.get("width") or default, kwargs.get("height") or default
    pairs = []
    for index, (phrase, (x0, y0, x1, y1)) in enumerate(zip(phrases, boxes)):
        if x1 > width or y1 > height:
            raise ValueError(f"boxes[{index}]={[x0, y0, x1, y1]} (pixels) reaches outside the {width}x{height} image")
        pairs.append((phrase, (x0 / width, y0 / height, x1 / width, y1 / height)))
    return {**kwargs, "regions": pairs}


SPEC = MethodSpec(
    "regional", "Layout", pipeline, "image",
    "layout-guided text-to-image, each phrase in its box",
    params=(
        Param("phrases", "one phrase of the prompt per box", None, TextList(), default="none (stock)"),
        Param("boxes", "one box [x0, y0, x1, y1] in pixels of the output image per phrase", None, Boxes(),
              default="none (stock)"),
        Param("layout_mode", '"forbid" (phrases masked outside their boxes), "bias" (eDiff-I paint-with-words), '
              '"prompts" (regional prompts), "guidance" (latent guidance by gradient)', "layout_mode",
              Choice(LAYOUT_MODES), default='"forbid"'),
        Param("layout_strength", "bias mode: eDiff-I's strength w; guidance mode: step size eta", "layout_strength",
              Number(0.0, 10_000.0), default="1.0"),
        Param("layout_until", "bias/guidance modes: fraction of the steps biased or guided", "layout_until",
              Number(0.0, 1.0, open_low=True), default="1.0"),
        Param("mask_special", 'drop end-of-text and padding keys: "off", "boxes", "all"', "mask_special",
              Choice(SPECIAL_MASKS), default='"off"'),
        Param("region_prompts", "prompts mode: one prompt per box", "region_prompts", TextList(),
              default="the phrases"),
        Param("base_prompt", "prompts mode: prompt for the whole image", "base_prompt", Text(),
              default="prompt"),
        Param("base_ratio", "prompts mode: the base prompt's share inside boxes", "base_ratio",
              Number(0.0, 1.0), default="0.2"),
        Param("region_weights", "prompts mode: one weight per box", "region_weights", NumberList(0.0),
              default="1 each"),
    ),
    combine=regions,
    combined_arguments=("regions",),
    capability="regional",
)
