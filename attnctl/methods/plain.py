"""``--method plain``: diffusers' stock ``StableDiffusionPipeline``, the baseline every method is compared with."""

from __future__ import annotations

from attnctl.spec import MethodSpec


def pipeline() -> type:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


SPEC = MethodSpec(
    "plain", "Stable Diffusion (stock)", pipeline, "image",
    "stock Stable Diffusion (diffusers' StableDiffusionPipeline), the baseline",
)
