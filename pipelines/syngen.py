"""``SynGenPipeline``: SynGen (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models").

Modifier-noun sets come from spaCy's dependency parse (:func:`attnctl.structured.phrases.modifier_sets`, the
parser structured guidance uses); in the early steps the latents move down the gradient of the SynGen loss
(:class:`attnctl.binding.syngen.SynGenLoss`) with a constant step. ``SynGenPipeline`` is Stable Diffusion
1.x/2.x, ``SynGenXLPipeline`` SDXL, ``SynGenPixArtSigmaPipeline`` PixArt-Sigma (T5 words, no start token).

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
from diffusers import PixArtSigmaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput

from attnctl.binding.syngen import ModifierIndices, SynGenLoss
from attnctl.core import TokenHeatmaps
from attnctl.guidance import GuidanceSchedule
from attnctl.structured.phrases import ModifierSet, modifier_sets

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


class SynGenMethod(GuidedMethodMixin):
    """SynGen, whatever the family; the variants below pick the parent pipeline."""

    def parse_modifiers(self, prompt: str) -> list[ModifierSet]:
        """The modifier sets of ``prompt`` (each noun with its modifiers and their token spans)."""
        return modifier_sets(prompt, self.family_text.tokenizer(self))

    def set_indices(self, sets: list[ModifierSet], num_tokens: int) -> list[ModifierIndices]:
        """Text-key positions of each set and U(S): the prompt's ``num_tokens`` tokens outside the set. Sets
        with a word past the encoder's limit are dropped."""
        before = self.special_tokens()[0]
        prompt_keys = range(before, before + num_tokens)
        result = []
        for s in sets:
            noun, modifiers = self.word_positions(s.noun), tuple(self.word_positions(m) for m in s.modifiers)
            words = {i for word in (noun, *modifiers) for i in word}
            if words <= set(prompt_keys):
                result.append(ModifierIndices(noun, modifiers, tuple(i for i in prompt_keys if i not in words)))
        return result

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
                for SD at 512 px; PixArt: the grid its token maps are pooled to).
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
        indices = [self.set_indices(s, self.prompt_length(p, call)) for s, p in zip(sets, prompts)]
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


class SynGenPixArtSigmaPipeline(SynGenMethod, PixArtSigmaPipeline):
    """SynGen on PixArt-Sigma: T5 modifier sets (no start token), maps pooled from its one token grid."""

    family = "pixart"
