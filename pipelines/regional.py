"""``RegionalDiffusionPipeline``: layout-guided text-to-image with region-constrained cross-attention.

The text-only use of PrimeComposer's RCA (spec Sec. 6): each listed phrase's tokens may only be attended to from the
token-grid cells inside its box, in every cross-attention layer and at every step, on the conditional half of the
guidance batch. ``RegionalDiffusionPipeline.from_pretrained(path)`` returns the variant of the folder's family (a
subclass of its diffusers pipeline) whose ``__call__`` keeps every parent argument and adds ``regions``; processors
are swapped only for the duration of the call (:mod:`attnctl.pipelines.base`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    FluxPipeline,
    PixArtSigmaPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import BaseOutput

from attnctl.composer import box_cells
from attnctl.core import AttentionCall
from attnctl.layout import LayoutSettings, layout_controls, layout_guidance

from .base import MethodRun
from .guided import GuidedMethodMixin

Box = Sequence[float]
RegionInput = tuple[str | Sequence[int], Box]


@dataclass
class RegionalDiffusionPipelineOutput(BaseOutput):
    """Images as the family's pipeline gives them, plus the regions used.

    Args:
        images: the generated images (list of PIL images, numpy array or tensor, per ``output_type``).
        nsfw_content_detected: per-image flags from the safety checker (SD 1.x/2.x), else ``None``.
        region_masks: per region, its box at the output's pixel size (``L`` image), for display.
        region_tokens: per region, the token positions in the text keys that were confined.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    region_masks: list[PIL.Image.Image]
    region_tokens: list[list[int]]


def check_region_box(box: Box, index: int) -> tuple[float, float, float, float]:
    """Validate a normalised box ``(x0, y0, x1, y1)`` inside ``[0, 1]``."""
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not (0 <= values[0] < values[2] <= 1 and 0 <= values[1] < values[3] <= 1):
        raise ValueError(f"regions[{index}] box {tuple(box)} is empty or outside the image; pass normalised "
                         "(x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return values


def conditional_rows(call: AttentionCall) -> slice:
    """The rows the pipeline declared conditional (the unconditional half of a guidance batch stays stock;
    so does Flux's separate true-CFG ``"uncond"`` pass)."""
    return call.rows.get("cond", slice(0, 0))


class RegionalMethod(GuidedMethodMixin):
    """Region-constrained cross-attention, whatever the family; the variants below pick the parent pipeline."""

    def region_tokens(self, prompt: str | list[str] | None, regions: Sequence[RegionInput],
                      call: Mapping[str, Any] | None = None) -> list[list[int]]:
        """Text-key positions of each region's phrase in ``prompt`` (or its explicit positions): CLIP's start
        token is position 0, a T5 prompt's first word is; SD3 has both (77 CLIP rows, then T5). With several
        prompts the phrase must sit at the same positions in each. ``call``: the pipeline call's arguments
        (T5 families: its ``max_sequence_length``)."""
        text, call = self.family_text, call or self.default_call()
        prompts = [prompt] if isinstance(prompt, str) else prompt
        tokens = []
        for index, (phrase, _) in enumerate(regions):
            name = f"regions[{index}]"
            if isinstance(phrase, str):
                if not prompts:
                    raise ValueError(f"{name} names a phrase, which needs the prompt text; with prompt_embeds give "
                                     "token positions instead")
                found = [text.word_positions(self, p, phrase, name, call) for p in prompts]
                if any(positions != found[0] for positions in found):
                    raise ValueError(f"{name}: {phrase!r} sits at different token positions in the prompts {found}; "
                                     "one box per call confines the same positions in every prompt")
                tokens.append(found[0])
            else:
                tokens.append(text.check_positions(phrase, name, self, call))
        return tokens

    def region_encodings(self, settings: LayoutSettings, regions: Sequence[RegionInput],
                         call: Mapping[str, Any]) -> torch.Tensor:
        """(regions, tokens, dim): each region prompt (default: its phrase) encoded alone, as the attention
        layers receive a prompt's states."""
        texts = settings.region_prompts or [phrase for phrase, _ in regions]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("layout_mode='prompts' needs a prompt per region: give region_prompts when regions "
                             "name token positions")
        return self.family_text.encode(self, list(texts), call)

    def prepare(
        self, call: Mapping[str, Any], *, regions: Sequence[RegionInput] | None = None, layout_mode: str = "forbid",
        layout_strength: float = 1.0, layout_until: float = 1.0, mask_special: str = "off",
        region_prompts: Sequence[str] | None = None, base_prompt: str | None = None, base_ratio: float = 0.2,
        region_weights: Sequence[float] | None = None,
    ) -> MethodRun:
        r"""Regional layout's arguments (``docs/layout.md``).

        Args:
            regions: ``[(phrase, (x0, y0, x1, y1)), ...]`` with the box normalised to ``[0, 1]`` (origin top-left);
                the phrase must occur in ``prompt``, or be given as token positions in the text keys (CLIP's
                start token = 0; T5 families have none, their first word is 0). ``None`` or an empty list: the
                family's stock pipeline.
            layout_mode: ``"forbid"`` (a phrase's tokens masked outside its box), ``"bias"`` (eDiff-I's
                paint-with-words bias), ``"prompts"`` (regional prompts) or ``"guidance"`` (Chen et al.'s
                backward guidance of the latents; SD 1.x/2.x and SDXL).
            layout_strength, layout_until: ``bias`` mode, eDiff-I's w and the fraction of steps biased;
                ``guidance`` mode, the step size eta and the fraction of steps with a latent update.
            mask_special: drop the end-of-text and padding keys, ``"off"``, ``"boxes"`` or ``"all"``.
            region_prompts, base_prompt, base_ratio, region_weights: ``prompts`` mode, one prompt per region
                (default: its phrase), the prompt for the whole image (default: ``prompt``), the base prompt's
                share inside the boxes and one weight per region.

        Returns :class:`RegionalDiffusionPipelineOutput`, or the parent's tuple when ``return_dict=False``.
        """
        regions = list(regions or [])
        boxes = [check_region_box(box, index) for index, (_, box) in enumerate(regions)]
        settings = LayoutSettings(layout_mode, layout_strength, layout_until, mask_special, base_ratio,
                                  region_weights, region_prompts, base_prompt)
        settings.check(len(regions))
        prompts_mode = layout_mode == "prompts"
        tokens = [[] for _ in regions] if prompts_mode else self.region_tokens(call["prompt"], regions, call)
        encodings = self.region_encodings(settings, regions, call) if prompts_mode and regions else None
        controls = layout_controls(self, settings, call, boxes, tokens, conditional_rows, encodings)
        guidance = layout_guidance(self, settings, call, boxes, tokens)

        def finish(output) -> RegionalDiffusionPipelineOutput:
            size = self.image_size(call)
            masks = [PIL.Image.fromarray(box_cells(box, size).numpy().astype(np.uint8) * 255) for box in boxes]
            return RegionalDiffusionPipelineOutput(
                images=output.images, nsfw_content_detected=getattr(output, "nsfw_content_detected", None),
                region_masks=masks, region_tokens=tokens)

        arguments = {"prompt": base_prompt} if prompts_mode and base_prompt is not None else {}
        if guidance is not None:  # the latents move by gradient (attnctl.guidance, as Attend-and-Excite)
            return self.guided_run(call, *guidance, None, True, False, lambda output, _maps, _log: finish(output))
        return MethodRun(controls, finish, arguments=arguments)


class RegionalDiffusionPipeline(RegionalMethod, StableDiffusionPipeline):
    """Each listed phrase confined to a box on SD 1.x/2.x; ``from_pretrained`` returns any supported family's
    variant."""

    family = "sd"


class RegionalDiffusionXLPipeline(RegionalMethod, StableDiffusionXLPipeline):
    """Each listed phrase confined to a box on SDXL."""

    family = "sdxl"


class RegionalPixArtSigmaPipeline(RegionalMethod, PixArtSigmaPipeline):
    """Each listed phrase confined to a box on PixArt-Sigma (T5 positions: the first word is position 0)."""

    family = "pixart"


class RegionalStableDiffusion3Pipeline(RegionalMethod, StableDiffusion3Pipeline):
    """Each listed phrase confined to a box on SD3/3.5: joint attention, image queries x the phrase's CLIP and
    T5 keys; text queries are never constrained."""

    family = "sd3"


class RegionalFluxPipeline(RegionalMethod, FluxPipeline):
    """Each listed phrase confined to a box on Flux: joint attention (double and single stream), image queries x
    the phrase's T5 keys; text queries are never constrained."""

    family = "flux"
