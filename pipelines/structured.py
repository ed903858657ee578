"""Structured Diffusion Guidance (Feng et al. 2023) on every text-to-image family attnctl supports.

``StructuredDiffusionPipeline.from_pretrained(path)`` returns the variant of the folder's family: a subclass of
that family's diffusers pipeline (SD 1.x/2.x, SDXL, PixArt-Sigma) whose ``__call__`` keeps every parent
argument and adds ``struct_mode``, ``phrases`` and ``return_attention_maps``. Noun phrases of the prompt are
encoded on their own and fed to every cross-attention layer through :class:`attnctl.structured.StructuredControl`;
the processors are swapped only for the duration of the call (:mod:`attnctl.pipelines.base`).
"""

from __future__ import annotations

import warnings
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

from attnctl.core import AttentionStore, TokenHeatmaps
from attnctl.structured import STRUCT_MODES, Phrase, PhraseEncoding, StructuredControl, prompt_phrases
from attnctl.structured.joint import (
    JointPhrase,
    JointStructuredControl,
    appended_phrase_rows,
    phrase_rows_layout,
)

from .base import ControlledPipelineMixin, MethodRun

PhraseInput = str | Phrase


@dataclass
class StructuredDiffusionPipelineOutput(BaseOutput):
    """Images as the family's pipeline gives them, plus what structured guidance used.

    Args:
        images: the generated images (list of PIL images, numpy array or tensor, per ``output_type``).
        nsfw_content_detected: per-image flags from the safety checker (SD 1.x/2.x), else ``None``.
        phrases: per prompt, the phrases that were encoded separately, with their token spans.
        attention_maps: per image, the per-token cross-attention heat maps (``return_attention_maps=True``).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    phrases: list[list[Phrase]]
    attention_maps: list[TokenHeatmaps] | None = None


class StructuredMethod(ControlledPipelineMixin):
    """Structured Diffusion Guidance, whatever the family; the variants below pick the parent pipeline."""

    def parse_phrases(self, prompt: str, phrases: Sequence[PhraseInput] | None = None) -> list[Phrase]:
        """The phrases of ``prompt`` structured guidance would encode, with token spans (from the first prompt token).

        ``phrases`` (strings that occur in the prompt) overrides spaCy parsing. A phrase covering the whole
        prompt is dropped: the full prompt is always encoded.
        """
        given = None if phrases is None else [p.text if isinstance(p, Phrase) else p for p in phrases]
        return prompt_phrases(prompt, self.family_text.tokenizer(self), given)

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

    def encode_phrases(self, phrases_per_prompt: list[list[Phrase]], call: Mapping[str, Any]) -> list[list[PhraseEncoding]]:
        """Encode every phrase on its own with the family's text encoders (one batched call)."""
        texts = [p.text for phrases in phrases_per_prompt for p in phrases]
        if not texts:
            return [[] for _ in phrases_per_prompt]
        embeds = self.family_text.encode(self, texts, call)
        flat = iter(range(len(texts)))
        offset = self.family_text.offset
        return [[PhraseEncoding(embeds[next(flat)], p.token_start, p.token_end, offset) for p in phrases]
                for phrases in phrases_per_prompt]

    def prepare(
        self,
        call: Mapping[str, Any],
        *,
        struct_mode: str | None = "values",
        phrases: Sequence[PhraseInput] | Sequence[Sequence[PhraseInput]] | None = None,
        return_attention_maps: bool = False,
    ) -> MethodRun:
        r"""Structured guidance's arguments.

        Args:
            struct_mode: ``"values"`` (paper default: one key, many values; same per-step cost as stock),
                ``"keys"`` (conjunction mode: many keys, one value; one softmax per key set) or ``None``
                (the family's stock pipeline).
            phrases: phrases to encode separately instead of spaCy's parse: one flat list for every prompt, or
                one list per prompt. Each must occur in its prompt. With ``prompt_embeds`` pass ``Phrase``
                objects from :meth:`parse_phrases`, whose token spans are known.
            return_attention_maps: also return per-token cross-attention heat maps of every image.

        Returns :class:`StructuredDiffusionPipelineOutput`, or the parent's tuple when ``return_dict=False``.
        """
        if struct_mode is not None and struct_mode not in STRUCT_MODES:
            raise ValueError(f"struct_mode={struct_mode!r} is not one of {STRUCT_MODES} or None (stock guidance)")
        joint = self.model_family.attention == "joint"
        if joint and struct_mode == "keys":
            raise ValueError(f"struct_mode='keys' is not defined on {self.model_family.title} (joint attention); "
                             "use struct_mode='values' (docs/structured.md)")
        if joint and struct_mode is not None and return_attention_maps:
            raise ValueError("return_attention_maps=True with structured guidance on joint attention: both need "
                             "the attention call (maps read probabilities, guidance replaces the kernel); "
                             "record maps with struct_mode=None")
        prompts = self.prompt_list(call)
        embeds = call["prompt_embeds"]
        num_prompts = len(prompts) if prompts is not None else (embeds.shape[0] if embeds is not None else 0)
        parsed = None
        if struct_mode is not None:
            for text in prompts or []:
                if not text.strip():
                    raise ValueError(f"prompt {text!r} is empty; structured guidance needs text (use "
                                     "struct_mode=None for unconditional generation)")
            parsed = self._phrases_per_prompt(prompts, num_prompts, phrases)
        images_per_prompt = call.get("num_images_per_prompt") or 1
        controls, rows, around = [], None, None
        if parsed is not None and any(parsed) and joint:
            control, rows, around = self._joint_guidance(prompts, parsed, call, images_per_prompt)
            controls.append(control)
        elif parsed is not None and any(parsed):
            rows = [enc for enc in self.encode_phrases(parsed, call) for _ in range(images_per_prompt)]
            controls.append(StructuredControl(rows, struct_mode))
            rows = None
        store = AttentionStore() if return_attention_maps else None
        if store is not None:
            controls.append(store)

        def finish(output) -> StructuredDiffusionPipelineOutput:
            heatmaps = None if store is None else self.token_heatmaps(store, call, num_prompts * images_per_prompt)
            return StructuredDiffusionPipelineOutput(
                images=output.images, nsfw_content_detected=getattr(output, "nsfw_content_detected", None),
                phrases=parsed if parsed is not None else [[] for _ in range(num_prompts)], attention_maps=heatmaps)

        return MethodRun(controls, finish, rows=rows, around=around)

    def _joint_guidance(self, prompts: list[str] | None, parsed: list[list[Phrase]], call: Mapping[str, Any],
                        images_per_prompt: int):
        """SD3/Flux: the control, the row layout and the phrase rows (:mod:`attnctl.structured.joint`)."""
        if prompts is None:
            raise ValueError("structured guidance on joint attention needs the prompt text (the phrases' T5 "
                             "positions are located in it); pass prompt, or struct_mode=None with prompt_embeds")
        texts = [p.text for phrases in parsed for p in phrases]
        embeds = self.family_text.encode(self, texts, call)
        per_row, owners, sources = [], [], []  # per conditional row its phrases; per phrase row its owner, text
        first = 0  # index of the prompt's first phrase in texts
        for prompt, phrases in zip(prompts, parsed):
            moves = [self.family_text.joint_moves(self, prompt, phrase, call) for phrase in phrases]
            for _ in range(images_per_prompt):
                per_row.append([JointPhrase(len(owners) + k, m) for k, m in enumerate(moves)])
                owners.extend([len(per_row) - 1] * len(phrases))
                sources.extend(range(first, first + len(phrases)))
            first += len(phrases)
        phrase_embeds = embeds[torch.tensor(sources, dtype=torch.long, device=embeds.device)]
        layout = phrase_rows_layout(len(per_row), len(owners))
        return (JointStructuredControl(per_row), layout,
                lambda: appended_phrase_rows(self.denoiser, phrase_embeds, owners, len(per_row)))


class StructuredDiffusionPipeline(StructuredMethod, StableDiffusionPipeline):
    """Structured Diffusion Guidance on SD 1.x/2.x; ``from_pretrained`` returns any supported family's variant."""

    family = "sd"


class StructuredDiffusionXLPipeline(StructuredMethod, StableDiffusionXLPipeline):
    """Structured Diffusion Guidance on SDXL: phrases through both text encoders, the pooled embedding the full
    prompt's."""

    family = "sdxl"


class StructuredPixArtSigmaPipeline(StructuredMethod, PixArtSigmaPipeline):
    """Structured Diffusion Guidance on PixArt-Sigma: T5 phrases (no start token) through ``caption_projection``."""

    family = "pixart"


class StructuredStableDiffusion3Pipeline(StructuredMethod, StableDiffusion3Pipeline):
    """Structured guidance on SD3/3.5's joint attention ("values" mode as docs/structured.md defines it): each
    phrase runs as an extra batch row; its CLIP and T5 rows replace the prompt's in what image queries read."""

    family = "sd3"


class StructuredFluxPipeline(StructuredMethod, FluxPipeline):
    """Structured guidance on Flux's double- and single-stream joint attention ("values" mode, T5 phrase rows;
    docs/structured.md)."""

    family = "flux"
