"""``AttendAndExcitePipeline``: Attend-and-Excite (Chefer et al., SIGGRAPH 2023) on diffusers' own pipelines.

It takes the arguments of diffusers' deprecated ``StableDiffusionAttendAndExcitePipeline`` (``token_indices``,
``max_iter_to_alter``, ``thresholds``, ``scale_factor``, ``attn_res``), so existing code moves by changing the
import, and picks the subject tokens from the prompt's noun phrases when ``token_indices`` is not given.
``AttendAndExcitePipeline`` is Stable Diffusion 1.x/2.x; ``AttendAndExciteXLPipeline`` is SDXL;
``AttendAndExcitePixArtSigmaPipeline`` is PixArt-Sigma (T5 prompts: token indices start at 0, no start token;
the maps are its one token grid pooled to the paper's scale, :class:`attnctl.guidance.PooledGradientMaps`).

Switched off (the parent pipeline runs untouched, bit for bit): ``scale_factor=0``, no subject tokens, or
``max_iter_to_alter=0`` with empty ``thresholds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import PixArtSigmaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput

from attnctl.binding.attend_excite import DEFAULT_THRESHOLDS, RELEASE_KEYS, AttendExciteLoss, Subject
from attnctl.core import TokenHeatmaps
from attnctl.guidance import GuidanceSchedule, decaying_step_sizes
from attnctl.structured.phrases import subject_words

from .base import MethodRun
from .guided import GuidedMethodMixin, finish_as, per_prompt


@dataclass
class AttendAndExcitePipelineOutput(BaseOutput):
    """Images as the parent pipeline gives them, plus what Attend-and-Excite used.

    Args:
        images: the generated images (per ``output_type``).
        nsfw_content_detected: the safety checker's flags (SD), or ``None``.
        token_indices: per prompt, the subjects (each a tuple of text-key positions: CLIP's start token is 0,
            T5 has none).
        attention_maps: per image, per-token heat maps (``return_attention_maps=True``).
        guidance_log: per measurement, loop index, refinement iteration, loss and gradient RMS per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    token_indices: list[list[Subject]]
    attention_maps: list[TokenHeatmaps] | None = None
    guidance_log: list[dict[str, Any]] | None = None


def _check_settings(max_iter_to_alter: Any, thresholds: Any, scale_factor: Any) -> None:
    if isinstance(max_iter_to_alter, bool) or not isinstance(max_iter_to_alter, int) or max_iter_to_alter < 0:
        raise ValueError(f"max_iter_to_alter={max_iter_to_alter!r} must be an integer >= 0")
    if not isinstance(thresholds, Mapping) or not all(
        isinstance(k, int) and k >= 0 and isinstance(v, (int, float)) and 0 <= v <= 1 for k, v in thresholds.items()
    ):
        raise ValueError(f"thresholds={thresholds!r} must map loop indices (int >= 0) to attention levels in [0, 1]")
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) or scale_factor < 0:
        raise ValueError(f"scale_factor={scale_factor!r} must be a number >= 0")


class AttendExciteMethod(GuidedMethodMixin):
    """Attend-and-Excite, whatever the family; the variants below pick the parent pipeline."""

    #: whether the text keys past the prompt are masked padding (T5): the token softmax then spans the
    #: unmasked keys instead of the release's CLIP columns (:data:`RELEASE_KEYS`)
    masked_padding: bool = False

    def subject_indices(self, prompt: str, call: Mapping[str, Any] | None = None) -> list[Subject]:
        """The subjects of ``prompt`` from its parsed noun phrases: head nouns, each with all its tokens (as
        text-key positions; words the encoder truncates are dropped)."""
        before = self.special_tokens()[0]
        end = before + self.prompt_length(prompt, call or self.default_call())
        subjects = [self.word_positions(word) for word in subject_words(prompt, self.family_text.tokenizer(self))]
        return [s for s in subjects if s[-1] < end]

    def get_indices(self, prompt: str) -> dict[int, str]:
        """Text-key position -> token text, as diffusers' pipeline offers, to choose ``token_indices`` by hand.

        PixArt lower-cases the prompt before T5 reads it (its ``_text_preprocessing``; CLIP's tokenizer does it
        itself), so its tokens are those of the lower-cased text."""
        tokenizer = self.family_text.tokenizer(self)
        if hasattr(self, "_text_preprocessing"):
            prompt = self._text_preprocessing(prompt, clean_caption=False)[0]
        ids = tokenizer(prompt).input_ids
        return {index: tokenizer.decode([token]).strip() for index, token in enumerate(ids)}

    def _lengths(self, call: Mapping[str, Any], prompts: list[str] | None, num_prompts: int) -> list[int]:
        """Per prompt, how many of its tokens reach attention (with ``prompt_embeds``: the family's limit, or
        the unmasked keys of ``prompt_attention_mask`` less the end token)."""
        if prompts is not None:
            return [self.prompt_length(p, call) for p in prompts]
        mask = call.get("prompt_attention_mask")
        if self.masked_padding and mask is not None:
            return [int(m.sum()) - self.special_tokens()[1] for m in mask[:num_prompts]]
        return [self.family_text.max_tokens(self, call)] * num_prompts

    def _subjects(self, call: Mapping[str, Any], prompts: list[str] | None, num_prompts: int,
                  token_indices: Any) -> list[list[Subject]]:
        given = per_prompt(token_indices, num_prompts, "token_indices", lambda v: isinstance(v, int))
        if given is None:
            if prompts is None:
                raise ValueError("token_indices=None needs the prompt text; with prompt_embeds pass token_indices")
            return [self.subject_indices(p, call) for p in prompts]
        before = self.special_tokens()[0]
        for indices, length in zip(given, self._lengths(call, prompts, num_prompts)):
            last = before + length - 1
            bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not before <= i <= last]
            if bad:
                start = "; 0 is the start token" if before else ""
                raise ValueError(f"token_indices={token_indices!r}: {bad} are not prompt tokens ({before}..{last}"
                                 f"{start}); see pipe.get_indices(prompt)")
        return [[(i,) for i in indices] for indices in given]

    def softmax_keys(self, call: Mapping[str, Any], prompts: list[str] | None, num_prompts: int):
        """Per prompt, the [first, end) text keys the token softmax spans: the release's columns for CLIP; the
        prompt tokens and end token for T5, whose masked padding would add a constant per key."""
        if not self.masked_padding:
            return [RELEASE_KEYS] * num_prompts
        before, after = self.special_tokens()
        return [(before, before + length + after) for length in self._lengths(call, prompts, num_prompts)]

    def prepare(
        self,
        call: Mapping[str, Any],
        *,
        token_indices: list[int] | list[list[int]] | None = None,
        max_iter_to_alter: int = 25,
        thresholds: dict[int, float] | None = None,
        scale_factor: float = 20,
        attn_res: tuple[int, int] | None = None,
        return_attention_maps: bool = False,
    ) -> MethodRun:
        r"""Attend-and-Excite's arguments (diffusers' names; keyword only).

        Args:
            token_indices: subject text-key positions (CLIP: start token = 0, so the first word is 1; T5: the
                first word is 0; see :meth:`get_indices`): one list for every
                prompt or one list per prompt. ``None``: the head nouns of the prompt's noun phrases, all tokens
                of each word (:meth:`subject_indices`).
            max_iter_to_alter: loop indices ``0 .. max_iter_to_alter - 1`` get one gradient update (25).
            thresholds: loop index -> attention level every subject must reach there (iterative refinement,
                at most 20 updates); default ``{0: 0.05, 10: 0.5, 20: 0.8}``.
            scale_factor: step size; ``alpha_i = scale_factor * sqrt(linspace(1, 0.5, steps)[i])`` (20).
            attn_res: (height, width) of the attention layers read; ``None``: 16x16 for SD at 512 px, a
                quarter of the latent for larger ones (24x24 at 768 px, 32x32 for SDXL at 1024 px). PixArt:
                the grid its token maps are pooled to (``None``: a quarter of the latent, 32x32 at 1024 px).
            return_attention_maps: also return per-token heat maps of every image.

        Returns :class:`AttendAndExcitePipelineOutput`, or the parent's tuple when ``return_dict=False``.
        """
        thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        _check_settings(max_iter_to_alter, thresholds, scale_factor)
        prompts = self.prompt_list(call)
        num_prompts = len(prompts) if prompts else call["prompt_embeds"].shape[0]
        subjects = self._subjects(call, prompts, num_prompts, token_indices)
        keys = self.per_image(call, self.softmax_keys(call, prompts, num_prompts))
        schedule = GuidanceSchedule(
            decaying_step_sizes(self.loop_length(call), scale_factor), update_steps=max_iter_to_alter,
            targets={i: 1.0 - level for i, level in thresholds.items()},
        )

        finish = finish_as(AttendAndExcitePipelineOutput, token_indices=subjects)
        return self.binding_run(call, lambda rows: AttendExciteLoss(rows, keys=keys), subjects, schedule, attn_res,
                                return_attention_maps, finish)


class AttendAndExcitePipeline(AttendExciteMethod, StableDiffusionPipeline):
    """Attend-and-Excite on SD 1.x/2.x; ``from_pretrained`` returns the variant of the checkpoint's family."""

    family = "sd"


class AttendAndExciteXLPipeline(AttendExciteMethod, StableDiffusionXLPipeline):
    """Attend-and-Excite on Stable Diffusion XL."""

    family = "sdxl"


class AttendAndExcitePixArtSigmaPipeline(AttendExciteMethod, PixArtSigmaPipeline):
    """Attend-and-Excite on PixArt-Sigma: T5 subjects (no start token), maps pooled from its one token grid."""

    family = "pixart"
    masked_padding = True
