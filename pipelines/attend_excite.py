"""``AttendAndExcitePipeline``: Attend-and-Excite (Chefer et al., SIGGRAPH 2023) on diffusers' own pipelines.

It takes the arguments of diffusers' deprecated ``StableDiffusionAttendAndExcitePipeline`` (``token_indices``,
``max_iter_to_alter``, ``thresholds``, ``scale_factor``, ``attn_res``), so existing code moves by changing the
import, and picks the subject tokens from the prompt's noun phrases when ``token_indices`` is not given.
``AttendAndExcitePipeline`` is Stable Diffusion 1.x/2.x; ``AttendAndExciteXLPipeline`` is SDXL.

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
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput

from attnctl.binding.attend_excite import DEFAULT_THRESHOLDS, AttendExciteLoss, Subject
from attnctl.core import TokenHeatmaps
from attnctl.guidance import GuidanceSchedule, decaying_step_sizes
from attnctl.structured.phrases import prompt_token_count, subject_words

from .base import MethodRun
from .guided import GuidedMethodMixin, finish_as, per_prompt


@dataclass
class AttendAndExcitePipelineOutput(BaseOutput):
    """Images as the parent pipeline gives them, plus what Attend-and-Excite used.

    Args:
        images: the generated images (per ``output_type``).
        nsfw_content_detected: the safety checker's flags (SD), or ``None``.
        token_indices: per prompt, the subjects (each a tuple of token indices, BOS at 0).
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

    def subject_indices(self, prompt: str) -> list[Subject]:
        """The subjects of ``prompt`` from its parsed noun phrases: head nouns, each with all its tokens."""
        return [word.indices for word in subject_words(prompt, self.tokenizer)]

    def get_indices(self, prompt: str) -> dict[int, str]:
        """Token index -> token text, as diffusers' pipeline offers, to choose ``token_indices`` by hand."""
        ids = self.tokenizer(prompt).input_ids
        return {index: self.tokenizer.decode([token]).strip() for index, token in enumerate(ids)}

    def _subjects(self, prompts: list[str] | None, num_prompts: int, token_indices: Any) -> list[list[Subject]]:
        given = per_prompt(token_indices, num_prompts, "token_indices", lambda v: isinstance(v, int))
        if given is None:
            if prompts is None:
                raise ValueError("token_indices=None needs the prompt text; with prompt_embeds pass token_indices")
            return [self.subject_indices(p) for p in prompts]
        for row, indices in enumerate(given):
            limit = prompt_token_count(prompts[row], self.tokenizer) if prompts else self.tokenizer.model_max_length - 2
            bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= limit]
            if bad:
                raise ValueError(
                    f"token_indices={token_indices!r}: {bad} are not prompt tokens (1..{limit}; 0 is the start "
                    "token); see pipe.get_indices(prompt)"
                )
        return [[(i,) for i in indices] for indices in given]

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
            token_indices: subject token indices (start token = 0; see :meth:`get_indices`): one list for every
                prompt or one list per prompt. ``None``: the head nouns of the prompt's noun phrases, all tokens
                of each word (:meth:`subject_indices`).
            max_iter_to_alter: loop indices ``0 .. max_iter_to_alter - 1`` get one gradient update (25).
            thresholds: loop index -> attention level every subject must reach there (iterative refinement,
                at most 20 updates); default ``{0: 0.05, 10: 0.5, 20: 0.8}``.
            scale_factor: step size; ``alpha_i = scale_factor * sqrt(linspace(1, 0.5, steps)[i])`` (20).
            attn_res: (height, width) of the attention layers read; ``None``: 16x16 for SD at 512 px, a
                quarter of the latent for larger ones (24x24 at 768 px, 32x32 for SDXL at 1024 px).
            return_attention_maps: also return per-token heat maps of every image.

        Returns :class:`AttendAndExcitePipelineOutput`, or the parent's tuple when ``return_dict=False``.
        """
        thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        _check_settings(max_iter_to_alter, thresholds, scale_factor)
        prompts = self.prompt_list(call)
        num_prompts = len(prompts) if prompts else call["prompt_embeds"].shape[0]
        subjects = self._subjects(prompts, num_prompts, token_indices)
        schedule = GuidanceSchedule(
            decaying_step_sizes(self.loop_length(call), scale_factor), update_steps=max_iter_to_alter,
            targets={i: 1.0 - level for i, level in thresholds.items()},
        )

        finish = finish_as(AttendAndExcitePipelineOutput, token_indices=subjects)
        return self.binding_run(call, AttendExciteLoss, subjects, schedule, attn_res, return_attention_maps, finish)


class AttendAndExcitePipeline(AttendExciteMethod, StableDiffusionPipeline):
    """Attend-and-Excite on SD 1.x/2.x; ``from_pretrained`` returns the variant of the checkpoint's family."""

    family = "sd"


class AttendAndExciteXLPipeline(AttendExciteMethod, StableDiffusionXLPipeline):
    """Attend-and-Excite on Stable Diffusion XL."""

    family = "sdxl"
