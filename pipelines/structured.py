"""``StructuredDiffusionPipeline``: Stable Diffusion with Structured Diffusion Guidance (Feng et al. 2023).

A subclass of diffusers' ``StableDiffusionPipeline`` whose ``__call__`` keeps every parent argument and adds
``struct_mode``, ``phrases`` and ``return_attention_maps``. Noun phrases of the prompt are encoded on their
own and fed to every cross-attention layer through :class:`attnctl.structured.StructuredControl`; the
processors are swapped only for the duration of the call.
"""

from __future__ import annotations

import warnings
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
from attnctl.core import AttentionController, AttentionStore, TokenHeatmaps, label_heatmaps
from attnctl.structured import STRUCT_MODES, Phrase, PhraseEncoding, StructuredControl, prompt_phrases

PhraseInput = str | Phrase


@dataclass
class StructuredDiffusionPipelineOutput(BaseOutput):
    """Images as ``StableDiffusionPipelineOutput`` gives them, plus what structured guidance used.

    Args:
        images: the generated images (list of PIL images, numpy array or tensor, per ``output_type``).
        nsfw_content_detected: per-image flags from the safety checker, or ``None``.
        phrases: per prompt, the phrases that were encoded separately, with their token spans.
        attention_maps: per image, the per-token cross-attention heat maps (``return_attention_maps=True``).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    phrases: list[list[Phrase]]
    attention_maps: list[TokenHeatmaps] | None = None


class StructuredDiffusionPipeline(StableDiffusionPipeline):
    """Text-to-image with Structured Diffusion Guidance; loads any SD 1.x/2.x checkpoint with ``from_pretrained``."""

    def parse_phrases(self, prompt: str, phrases: Sequence[PhraseInput] | None = None) -> list[Phrase]:
        """The phrases of ``prompt`` structured guidance would encode, with token spans (after BOS).

        ``phrases`` (strings that occur in the prompt) overrides spaCy parsing. A phrase covering the whole
        prompt is dropped: the full prompt is always encoded.
        """
        given = None if phrases is None else [p.text if isinstance(p, Phrase) else p for p in phrases]
        return prompt_phrases(prompt, self.tokenizer, given)

    def _phrases_per_prompt(
        self,
        prompts: list[str] | None,
        num_prompts: int,
        phrases: Sequence[PhraseInput] | Sequence[Sequence[PhraseInput]] | None,
    ) -> list[list[Phrase]] | None:
        """Phrases for each prompt, or ``None`` (with one warning) when guidance has to fall back to stock."""
        nested = phrases is not None and len(phrases) > 0 and not isinstance(phrases[0], (str, Phrase))
        if nested and len(phrases) != num_prompts:
            raise ValueError(
                f"phrases has {len(phrases)} lists for {num_prompts} prompts; give one list per prompt, "
                "or one flat list used for every prompt"
            )
        per_prompt = [list(p) for p in phrases] if nested else [phrases] * num_prompts
        if prompts is None:  # prompt_embeds: only phrases that carry their token spans can be placed
            if phrases is None:
                warnings.warn(
                    "structured guidance is off: with prompt_embeds the prompt text is unknown, so pass "
                    "phrases=pipe.parse_phrases(prompt) to use it",
                    UserWarning,
                    stacklevel=3,
                )
                return None
            for items in per_prompt:
                for item in items or []:
                    if not isinstance(item, Phrase):
                        raise ValueError(
                            f"phrases contains {item!r}, a plain string; with prompt_embeds pass Phrase objects "
                            "from pipe.parse_phrases(prompt) so their token positions are known"
                        )
            return [list(items or []) for items in per_prompt]
        try:
            return [self.parse_phrases(p, items) for p, items in zip(prompts, per_prompt)]
        except RuntimeError as error:  # no English spaCy pipeline installed: never stock images labelled structured
            raise ValueError(f"phrases: {error}; or struct_mode=None for stock Stable Diffusion") from None

    def encode_phrases(
        self, phrases_per_prompt: list[list[Phrase]], device: torch.device, clip_skip: int | None = None,
        lora_scale: float | None = None,
    ) -> list[list[PhraseEncoding]]:
        """Encode every phrase on its own with the pipeline's text encoder (one batched call)."""
        texts = [p.text for phrases in phrases_per_prompt for p in phrases]
        if not texts:
            return [[] for _ in phrases_per_prompt]
        embeds, _ = self.encode_prompt(texts, device, 1, False, lora_scale=lora_scale, clip_skip=clip_skip)
        flat = iter(range(len(texts)))
        return [
            [PhraseEncoding(embeds[next(flat)], p.token_start, p.token_end) for p in phrases]
            for phrases in phrases_per_prompt
        ]

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
        struct_mode: str | None = "values",
        phrases: Sequence[PhraseInput] | Sequence[Sequence[PhraseInput]] | None = None,
        return_attention_maps: bool = False,
        **kwargs,
    ) -> StructuredDiffusionPipelineOutput | tuple:
        r"""Generate images; every argument of ``StableDiffusionPipeline.__call__`` works as there.

        Args:
            struct_mode: ``"values"`` (paper default: one key, many values; same per-step cost as stock),
                ``"keys"`` (conjunction mode: many keys, one value; one softmax per key set) or ``None``
                (stock Stable Diffusion).
            phrases: phrases to encode separately instead of spaCy's parse: one flat list for every prompt, or
                one list per prompt. Each must occur in its prompt. With ``prompt_embeds`` pass ``Phrase``
                objects from :meth:`parse_phrases`, whose token spans are known.
            return_attention_maps: also return per-token cross-attention heat maps of every image.

        Returns:
            :class:`StructuredDiffusionPipelineOutput`, or the parent's ``(images, nsfw)`` tuple when
            ``return_dict=False``.
        """
        check_call(self, locals())  # every argument, before any model runs
        if struct_mode is not None and struct_mode not in STRUCT_MODES:
            raise ValueError(f"struct_mode={struct_mode!r} is not one of {STRUCT_MODES} or None (stock guidance)")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        num_prompts = len(prompts) if prompts is not None else (
            prompt_embeds.shape[0] if prompt_embeds is not None else 0
        )
        parsed = None
        if struct_mode is not None:
            for text in prompts or []:
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(
                        f"prompt {text!r} is empty; structured guidance needs text (use struct_mode=None for "
                        "unconditional generation)"
                    )
            parsed = self._phrases_per_prompt(prompts, num_prompts, phrases)
        images_per_prompt = num_images_per_prompt or 1

        controls = []
        if parsed is not None and any(parsed):
            lora_scale = (cross_attention_kwargs or {}).get("scale")
            encodings = self.encode_phrases(parsed, self._execution_device, clip_skip, lora_scale)
            rows = [enc for enc in encodings for _ in range(images_per_prompt)]
            controls.append(StructuredControl(rows, struct_mode))
        store = AttentionStore() if return_attention_maps else None
        if store is not None:
            controls.append(store)

        call_args = dict(
            prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps,
            timesteps=timesteps, sigmas=sigmas, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator, latents=latents,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            output_type=output_type, return_dict=True, cross_attention_kwargs=cross_attention_kwargs,
            guidance_rescale=guidance_rescale, clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **kwargs,
        )
        if controls:
            with AttentionController(controls).installed(self.unet):
                output = super().__call__(**call_args)
        else:
            output = super().__call__(**call_args)
        if not return_dict:
            return output.images, output.nsfw_content_detected

        heatmaps = None
        if store is not None:
            heatmaps = self._heatmaps(store, prompts, num_prompts * images_per_prompt, height, width)
        return StructuredDiffusionPipelineOutput(
            images=output.images,
            nsfw_content_detected=output.nsfw_content_detected,
            phrases=parsed if parsed is not None else [[] for _ in range(num_prompts)],
            attention_maps=heatmaps,
        )

    def _heatmaps(
        self, store: AttentionStore, prompts: list[str] | None, num_images: int, height: int | None,
        width: int | None,
    ) -> list[TokenHeatmaps]:
        size = (height or self.unet.config.sample_size * self.vae_scale_factor,
                width or self.unet.config.sample_size * self.vae_scale_factor)
        maps = store.maps(size)[-num_images:]  # the conditional rows come last
        if prompts is None:
            ids = [list(range(maps.shape[1] - 2))] * num_images
            return [TokenHeatmaps([f"#{i}" for i in row], m[1 : 1 + len(row)]) for row, m in zip(ids, maps)]
        per_prompt = self.tokenizer(prompts, truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        repeat = num_images // len(prompts)
        ids = [row[1:-1] for row in per_prompt for _ in range(repeat)]
        return label_heatmaps(maps, ids, self.tokenizer)
