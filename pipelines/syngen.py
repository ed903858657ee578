"""``SynGenPipeline``: SynGen (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models").

Modifier-noun sets come from spaCy's dependency parse (:func:`attnctl.structured.phrases.modifier_sets`, the
parser structured guidance uses); in the early steps the latents move down the gradient of the SynGen loss
(:class:`attnctl.binding.syngen.SynGenLoss`) with a constant step. ``SynGenPipeline`` is Stable Diffusion
1.x/2.x, ``SynGenXLPipeline`` SDXL.

Switched off (the parent runs untouched, bit for bit): ``syngen_step_size=0``, ``num_intervention_steps=0``
or a prompt without modifiers.
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

from attnctl.binding.syngen import ModifierIndices, SynGenLoss
from attnctl.core import TokenHeatmaps
from attnctl.guidance import GuidanceSchedule
from attnctl.structured.phrases import ModifierSet, modifier_sets, prompt_token_count

from .base import MethodRun
from .guided import GuidedMethodMixin, finish_as, per_prompt


@dataclass
class SynGenPipelineOutput(BaseOutput):
    """Images as the parent pipeline gives them, plus the modifier sets SynGen bound.

    Args:
        images: the generated images (per ``output_type``).
        nsfw_content_detected: the safety checker's flags (SD), or ``None``.
        modifier_sets: per prompt, its modifier sets (words with their token spans).
        attention_maps: per image, per-token heat maps (``return_attention_maps=True``).
        guidance_log: per measurement, loop index, loss and gradient RMS per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    modifier_sets: list[list[ModifierSet]]
    attention_maps: list[TokenHeatmaps] | None = None
    guidance_log: list[dict[str, Any]] | None = None


def set_indices(sets: list[ModifierSet], num_tokens: int) -> list[ModifierIndices]:
    """Token indices of each set and U(S): the prompt tokens 1..num_tokens outside the set."""
    return [
        ModifierIndices(s.noun.indices, tuple(m.indices for m in s.modifiers),
                        tuple(i for i in range(1, num_tokens + 1) if i not in s.indices))
        for s in sets
    ]


class SynGenMethod(GuidedMethodMixin):
    """SynGen, whatever the family; the variants below pick the parent pipeline."""

    def parse_modifiers(self, prompt: str) -> list[ModifierSet]:
        """The modifier sets of ``prompt`` (each noun with its modifiers and their token spans)."""
        return modifier_sets(prompt, self.tokenizer)

    def prepare(
        self,
        call: Mapping[str, Any],
        *,
        syngen_step_size: float = 20.0,
        num_intervention_steps: int = 25,
        attn_res: tuple[int, int] | None = None,
        modifier_sets: list[ModifierSet] | list[list[ModifierSet]] | None = None,
        return_attention_maps: bool = False,
    ) -> MethodRun:
        r"""SynGen's arguments (the release's names; keyword only).

        Args:
            syngen_step_size: the constant step alpha of z <- z - alpha grad L (20).
            num_intervention_steps: loop indices ``0 .. n-1`` are updated, one step each (25).
            attn_res: (height, width) of the attention layers read (as in Attend-and-Excite; ``None``: 16x16
                for SD at 512 px).
            modifier_sets: sets from :meth:`parse_modifiers` to use instead of parsing (one flat list for
                every prompt or one list per prompt).
            return_attention_maps: also return per-token heat maps of every image.

        Returns :class:`SynGenPipelineOutput`, or the parent's tuple when ``return_dict=False``.
        """
        if isinstance(syngen_step_size, bool) or not isinstance(syngen_step_size, (int, float)) or syngen_step_size < 0:
            raise ValueError(f"syngen_step_size={syngen_step_size!r} must be a number >= 0")
        if isinstance(num_intervention_steps, bool) or not isinstance(num_intervention_steps, int) \
                or num_intervention_steps < 0:
            raise ValueError(f"num_intervention_steps={num_intervention_steps!r} must be an integer >= 0")
        prompts = self.prompt_list(call)
        if prompts is None:
            raise ValueError("SynGen needs the prompt text to find its modifiers; prompt_embeds alone is not enough")
        given = per_prompt(modifier_sets, len(prompts), "modifier_sets", lambda v: isinstance(v, ModifierSet))
        sets = given if given is not None else [self.parse_modifiers(p) for p in prompts]
        indices = [set_indices(s, prompt_token_count(p, self.tokenizer)) for s, p in zip(sets, prompts)]
        schedule = GuidanceSchedule((float(syngen_step_size),) * self.loop_length(call),
                                    update_steps=num_intervention_steps)

        finish = finish_as(SynGenPipelineOutput, modifier_sets=sets)
        return self.binding_run(call, SynGenLoss, indices, schedule, attn_res, return_attention_maps, finish)


class SynGenPipeline(SynGenMethod, StableDiffusionPipeline):
    """SynGen on SD 1.x/2.x; ``from_pretrained`` returns the variant of the checkpoint's family."""

    family = "sd"


class SynGenXLPipeline(SynGenMethod, StableDiffusionXLPipeline):
    """SynGen on Stable Diffusion XL."""

    family = "sdxl"
