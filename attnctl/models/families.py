"""The model families attnctl supports, and which family a diffusers checkpoint belongs to.

A family groups the diffusers pipelines that share one denoiser architecture, so attnctl's processors and
method pipelines treat them alike (SD 1.x and 2.x share a family; SDXL's UNet is the same class but its
pipelines encode text differently, so it is its own family). The registry is plain data and imports no
diffusers, so the CLI and the UI can detect and describe a model before loading anything.

Public API:

* :data:`FAMILIES`: name -> :class:`Family`, in display order;
* :func:`detect_family`: the family of a model folder, a hub id, a ``model_index.json`` dict or a pipeline;
* :func:`get_family`: a family by name (``ValueError`` listing the supported ones otherwise);
* :func:`families_supporting`: the families where a capability (a method) works.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Capabilities a family may have: per-token attention maps plus every ``attnctl generate --method``.
CAPABILITIES = ("attention_maps", "structured", "regional", "compose", "freeswim", "binding")


@dataclass(frozen=True)
class Family:
    """One model family.

    Args:
        name: short id (``"sdxl"``), used by the CLI, the docs table and the method pipelines.
        title: what users call it (``"Stable Diffusion XL"``).
        pipelines: diffusers pipeline class names (``model_index.json``'s ``_class_name``) of the family.
        text_to_image: the family's plain generation pipeline, the parent of attnctl's variants.
        denoiser: the pipeline attribute holding the attention model (``"unet"`` or ``"transformer"``).
        denoiser_classes: diffusers model classes of that attribute (detection of renamed pipelines).
        attention: ``"cross"`` (image queries read text keys) or ``"joint"`` (text and image tokens attend
            together, the text stream updated per block).
        capabilities: the entries of :data:`CAPABILITIES` that work on this family.
        not_applicable: for the other capabilities, why they do not apply.
    """

    name: str
    title: str
    pipelines: tuple[str, ...]
    text_to_image: str
    denoiser: str
    denoiser_classes: tuple[str, ...]
    attention: str
    capabilities: frozenset[str]
    not_applicable: Mapping[str, str] = field(default_factory=dict)

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"capability={capability!r} is not one of {CAPABILITIES}")
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Raise ``ValueError`` saying which families support ``capability`` when this one does not."""
        if not self.supports(capability):
            reason = self.not_applicable.get(capability, "not implemented")
            names = ", ".join(f.name for f in families_supporting(capability))
            raise ValueError(f"{capability} does not apply to {self.title} ({self.name}): {reason}; "
                             f"it supports the families {names}")


_VIDEO_ONLY = "FreeSwim is a video method (Wan's windowed self-attention over frames)"
_T2I = frozenset({"attention_maps", "structured", "regional"})
_WAN_NA = {
    "structured": "video family: attnctl's structured guidance is defined for text-to-image pipelines",
    "binding": "video family: Attend-and-Excite and SynGen are text-to-image pipelines",
    "regional": "video family: boxes are defined on one image grid, not on frames",
    "compose": "PrimeComposer composes one image into a background image",
}
_BINDING_JOINT = ("not implemented: Attend-and-Excite's and SynGen's gradient maps read cross-attention layers; joint "
                  "attention needs its image-query x text-key block renormalised and the family's own loop "
                  "(docs/binding.md)")
_COMPOSE_JOINT = ("PrimeComposer injects self-attention logits (image x image); joint attention has one softmax "
                  "over image and text tokens, so an injection there changes the text weights too "
                  "(docs/composer.md)")

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("sd", "Stable Diffusion 1.x/2.x",
               ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
               "StableDiffusionPipeline", "unet", ("UNet2DConditionModel",), "cross",
               _T2I | {"compose", "binding"}, {"freeswim": _VIDEO_ONLY}),
        Family("sdxl", "Stable Diffusion XL",
               ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                "StableDiffusionXLInpaintPipeline"),
               "StableDiffusionXLPipeline", "unet", ("UNet2DConditionModel",), "cross",
               _T2I | {"compose", "binding"}, {"freeswim": _VIDEO_ONLY}),
        Family("sd3", "Stable Diffusion 3/3.5",
               ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
               "StableDiffusion3Pipeline", "transformer", ("SD3Transformer2DModel",), "joint",
               _T2I, {"compose": _COMPOSE_JOINT, "freeswim": _VIDEO_ONLY, "binding": _BINDING_JOINT}),
        Family("flux", "Flux.1",
               ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
               "FluxPipeline", "transformer", ("FluxTransformer2DModel",), "joint",
               _T2I, {"compose": _COMPOSE_JOINT, "freeswim": _VIDEO_ONLY, "binding": _BINDING_JOINT}),
        Family("pixart", "PixArt-Sigma",
               ("PixArtSigmaPipeline",),
               "PixArtSigmaPipeline", "transformer", ("PixArtTransformer2DModel",), "cross",
               _T2I | {"binding"}, {"compose": "attnctl's PrimeComposer is built on the SD img2img pipeline and its "
                      "DPM-Solver inversion; PixArt has no img2img pipeline in diffusers",
                      "freeswim": _VIDEO_ONLY}),
        Family("wan-t2v", "Wan 2.1/2.2 text-to-video",
               ("WanPipeline",),
               "WanPipeline", "transformer", ("WanTransformer3DModel",), "cross",
               frozenset({"attention_maps", "freeswim"}), _WAN_NA),
        Family("wan-i2v", "Wan 2.1/2.2 image-to-video",
               ("WanImageToVideoPipeline",),
               "WanImageToVideoPipeline", "transformer", ("WanTransformer3DModel",), "cross",
               frozenset({"attention_maps", "freeswim"}), _WAN_NA),
        Family("wan-vace", "Wan VACE",
               ("WanVACEPipeline",),
               "WanVACEPipeline", "transformer", ("WanVACETransformer3DModel",), "cross",
               frozenset({"attention_maps", "freeswim"}), _WAN_NA),
    )
}


def get_family(name: str) -> Family:
    """The family called ``name``; ``ValueError`` listing the supported names otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not supported; supported families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def families_supporting(capability: str) -> list[Family]:
    """The families on which ``capability`` works, in display order."""
    return [f for f in FAMILIES.values() if f.supports(capability)]


def _component(index: Mapping[str, Any], name: str) -> str | None:
    spec = index.get(name)
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) == 2 else None


def _by_components(index: Mapping[str, Any]) -> Family | None:
    """The family of a pipeline class diffusers does not define (attnctl's own, a community subclass), read
    from its denoiser's and text encoders' classes."""
    if _component(index, "unet") == "UNet2DConditionModel":
        if _component(index, "text_encoder_2") == "CLIPTextModelWithProjection":
            return FAMILIES["sdxl"]
        if _component(index, "text_encoder") == "CLIPTextModel":
            return FAMILIES["sd"]
        return None
    transformer = _component(index, "transformer")
    if transformer == "WanTransformer3DModel":
        return FAMILIES["wan-i2v" if "image_encoder" in index or "image_processor" in index else "wan-t2v"]
    candidates = [f for f in FAMILIES.values() if transformer in f.denoiser_classes]
    return candidates[0] if len(candidates) == 1 else None


def _is_diffusers_class(name: Any) -> bool:
    import diffusers

    return isinstance(name, str) and hasattr(diffusers, name)


def _model_index(source: Any) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if hasattr(source, "config") and hasattr(source, "components"):  # a loaded DiffusionPipeline
        return {"_class_name": type(source).__name__, **source.config}
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            index = path / "model_index.json"
            if not index.is_file():
                raise ValueError(f"model={str(source)!r} is a folder without model_index.json: not a diffusers "
                                 "pipeline folder (save one with pipe.save_pretrained)")
            return json.loads(index.read_text())
        if path.is_file() and path.name == "model_index.json":
            return json.loads(path.read_text())
        # a hub id: diffusers fetches (or reads from its cache) only model_index.json
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(str(source))
    raise ValueError(f"cannot read a model family from {type(source).__name__}; pass a folder, a hub id, a "
                     "model_index.json mapping or a pipeline")


def detect_family(source: Any) -> Family:
    """The :class:`Family` of a pipeline folder, hub id, ``model_index.json`` (path or dict) or loaded pipeline.

    The family is looked up from ``_class_name`` (as diffusers' AutoPipeline does). A class diffusers does not
    define (attnctl's ``StructuredDiffusionXLPipeline``, a community subclass) is recognised by its denoiser
    and text encoders; any other diffusers pipeline is unsupported.
    Raises ``ValueError`` naming the class and the supported families when neither matches.
    """
    index = _model_index(source)
    class_name = index.get("_class_name")
    for family in FAMILIES.values():
        if class_name in family.pipelines:
            return family
    family = None if _is_diffusers_class(class_name) else _by_components(index)
    if family is None:
        supported = "; ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in FAMILIES.values())
        raise ValueError(f"the pipeline class {class_name!r} is not a model family attnctl supports; "
                         f"supported families: {supported}")
    return family
