"""``RegionalDiffusionPipeline``: layout-guided text-to-image with region-constrained cross-attention.

Modes of one regional control (``layout_mode``, see ``docs/layout.md``). The default, ``"forbid"``, is the
text-only use of PrimeComposer's RCA (spec Sec. 6): each listed phrase's tokens may only be attended to from the
token-grid cells inside its box, in every cross-attention layer and at every step, on the conditional half of the
guidance batch. A subclass of diffusers' ``StableDiffusionPipeline`` whose ``__call__`` keeps every parent argument
and adds ``regions``; processors are swapped only for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.utils import BaseOutput

from attnctl.checks import check_call
from attnctl.composer import all_rows, box_cells, check_token_indices, conditional_half, words_token_indices
from attnctl.core import AttentionCall, AttentionController
from attnctl.layout import LayoutSettings, layout_controls

Box = Sequence[float]
RegionInput = tuple[str | Sequence[int], Box]


@dataclass
class RegionalDiffusionPipelineOutput(BaseOutput):
    """Images as ``StableDiffusionPipelineOutput`` gives them, plus the regions used.

    Args:
        images: the generated images (list of PIL images, numpy array or tensor, per ``output_type``).
        nsfw_content_detected: per-image flags from the safety checker, or ``None``.
        region_masks: per region, its box at the output's pixel size (``L`` image), for display.
        region_tokens: per region, the token positions (start token = 0) that were confined.
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


class RegionalDiffusionPipeline(StableDiffusionPipeline):
    """Text-to-image where each listed phrase is confined to a box; loads any SD 1.x/2.x checkpoint."""

    def region_tokens(self, prompt: str | None, regions: Sequence[RegionInput]) -> list[list[int]]:
        """Token positions of each region's phrase in ``prompt`` (or its explicit positions)."""
        tokens = []
        for index, (phrase, _) in enumerate(regions):
            name = f"regions[{index}]"
            if isinstance(phrase, str):
                if not isinstance(prompt, str):
                    raise ValueError(f"{name} names a phrase, which needs one prompt string; with prompt_embeds or "
                                     "several prompts give token positions instead")
                tokens.append(words_token_indices(self.tokenizer, prompt, phrase, name))
            else:
                tokens.append(check_token_indices(phrase, self.tokenizer.model_max_length, name))
        return tokens

    def region_encodings(self, settings: LayoutSettings, regions: Sequence[RegionInput], clip_skip: int | None):
        """(regions, tokens, dim): each region prompt (default: its phrase) through the text encoder."""
        texts = settings.region_prompts or [phrase for phrase, _ in regions]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("layout_mode='prompts' needs a prompt per region: give region_prompts when regions "
                             "name token positions")
        return self.encode_prompt(list(texts), self._execution_device, 1, False, clip_skip=clip_skip)[0]

    def _rows(self, call: AttentionCall) -> slice:
        return conditional_half(call) if self.do_classifier_free_guidance else all_rows(call)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] = None,
        sigmas: list[float] = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (the parent's default)
        regions: Sequence[RegionInput] | None = None,
        layout_mode: str = "forbid",
        layout_strength: float = 1.0,
        layout_until: float = 1.0,
        mask_special: str = "off",
        region_prompts: Sequence[str] | None = None,
        base_prompt: str | None = None,
        base_ratio: float = 0.2,
        region_weights: Sequence[float] | None = None,
        **kwargs,
    ) -> RegionalDiffusionPipelineOutput | tuple:
        r"""Generate images; every argument of ``StableDiffusionPipeline.__call__`` works as there.

        Args:
            regions: ``[(phrase, (x0, y0, x1, y1)), ...]`` with the box normalised to ``[0, 1]`` (origin top-left);
                the phrase must occur in ``prompt``, or be given as token positions (start token = 0). ``None`` or
                an empty list: stock Stable Diffusion.
            layout_mode: ``"forbid"`` (a phrase's tokens masked outside its box), ``"bias"`` (eDiff-I's
                paint-with-words bias) or ``"prompts"`` (regional prompts); see ``docs/layout.md``.
            layout_strength, layout_until: ``bias`` mode, eDiff-I's w and the fraction of steps biased.
            mask_special: drop the end-of-text and padding keys, ``"off"``, ``"boxes"`` or ``"all"``.
            region_prompts, base_prompt, base_ratio, region_weights: ``prompts`` mode, one prompt per region
                (default: its phrase), the prompt for the whole image (default: ``prompt``), the base prompt's
                share inside the boxes and one weight per region.

        Returns:
            :class:`RegionalDiffusionPipelineOutput`, or the parent's ``(images, nsfw)`` tuple when
            ``return_dict=False``.
        """
        check_call(self, locals())  # every argument, before any model runs
        regions = list(regions or [])
        boxes = [check_region_box(box, index) for index, (_, box) in enumerate(regions)]
        settings = LayoutSettings(layout_mode, layout_strength, layout_until, mask_special, base_ratio,
                                  region_weights, region_prompts, base_prompt)
        settings.check(len(regions))
        prompts_mode = layout_mode == "prompts"
        tokens = [[] for _ in regions] if prompts_mode else self.region_tokens(prompt, regions)
        encodings = self.region_encodings(settings, regions, clip_skip) if prompts_mode and regions else None
        call_args = dict(
            prompt=base_prompt if prompts_mode and base_prompt is not None else prompt, height=height, width=width, num_inference_steps=num_inference_steps,
            timesteps=timesteps, sigmas=sigmas, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator, latents=latents,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            output_type=output_type, return_dict=True, cross_attention_kwargs=cross_attention_kwargs,
            guidance_rescale=guidance_rescale, clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs,
        )
        controls = layout_controls(self, settings, prompt, boxes, tokens, num_inference_steps, self._rows, encodings)
        if controls:
            with AttentionController(controls).installed(self.unet):
                output = super().__call__(**call_args)
        else:
            output = super().__call__(**call_args)
        if not return_dict:
            return output.images, output.nsfw_content_detected
        size = (height or self.unet.config.sample_size * self.vae_scale_factor,
                width or self.unet.config.sample_size * self.vae_scale_factor)
        masks = [PIL.Image.fromarray(box_cells(box, size).numpy().astype(np.uint8) * 255) for box in boxes]
        return RegionalDiffusionPipelineOutput(images=output.images, nsfw_content_detected=output.nsfw_content_detected,
                                               region_masks=masks, region_tokens=tokens)
