"""What the gradient-guided method pipelines (Attend-and-Excite, SynGen) share, on :mod:`attnctl.pipelines.base`.

A method's ``prepare`` builds its loss and :class:`~attnctl.guidance.GuidanceSchedule` and calls
:meth:`GuidedMethodMixin.guided_run`, which returns the :class:`MethodRun`: the maps control (installed for the
whole call, so the processors come back when anything raises), the parent arguments that guide the latents
(``latents`` and the step-end callback, :func:`attnctl.guidance.guidance_arguments`) and the output builder.
A run whose schedule never moves the latents installs nothing and changes no argument: the parent pipeline runs
as stock, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from attnctl.core import AttentionStore, TokenHeatmaps, guidance_rows
from attnctl.guidance import GradientMaps, GuidanceSchedule, MapLoss, PooledGradientMaps, guidance_arguments
from attnctl.structured.phrases import Word, normalize_prompt

from .base import ControlledPipelineMixin, MethodRun

#: finish(parent output, heat maps or None, guidance log) -> the method's output
Finish = Callable[[Any, "list[TokenHeatmaps] | None", "list[dict[str, Any]]"], Any]


def finish_as(output_class: type, **fields: Any) -> Finish:
    """The finish of a guided method whose output is ``output_class``: the parent's images and NSFW flags, the
    heat maps, the guidance log and the method's own ``fields``."""

    def finish(output: Any, heatmaps: list[TokenHeatmaps] | None, log: list[dict[str, Any]]) -> Any:
        return output_class(
            images=output.images, nsfw_content_detected=getattr(output, "nsfw_content_detected", None),
            attention_maps=heatmaps, guidance_log=log, **fields,
        )

    return finish


class InferenceStore(AttentionStore):
    """Heat maps of the images as drawn: the stock denoiser passes only, not the guidance forwards."""

    def applies_to(self, call) -> bool:
        return not torch.is_grad_enabled() and super().applies_to(call)


def per_prompt(value: Sequence | None, num_prompts: int, name: str, is_item: Callable[[Any], bool]) -> list | None:
    """``value`` as one list per prompt: a flat list (of items) is shared, a nested list must match the prompts."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}={value!r} must be a list (one flat list, or one list per prompt)")
    if len(value) == 0 or all(is_item(v) for v in value):
        return [list(value)] * num_prompts
    if len(value) != num_prompts or not all(isinstance(v, (list, tuple)) for v in value):
        raise ValueError(f"{name}={value!r}: give one flat list, or one list per prompt ({num_prompts} prompts)")
    return [list(v) for v in value]


class GuidedMethodMixin(ControlledPipelineMixin):
    """Base of methods that move the latents by the gradient of a loss on cross-attention maps."""

    # -- prompt tokens as text-key positions (CLIP puts a start token first, T5 none: read off the tokenizer) --
    def special_tokens(self) -> tuple[int, int]:
        """(before, after): how many special tokens the tokenizer puts before and after a text (CLIP: 1, 1;
        T5: 0, 1), so a word's key position is ``before`` + its token position in the text."""
        tokenizer = self.family_text.tokenizer(self)
        plain, full = tokenizer("a", add_special_tokens=False).input_ids, tokenizer("a").input_ids
        before = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
        return before, len(full) - len(plain) - before

    def word_positions(self, word: Word) -> tuple[int, ...]:
        """The text-key positions of ``word``'s tokens."""
        before = self.special_tokens()[0]
        return tuple(range(before + word.token_start, before + word.token_end))

    def prompt_length(self, prompt: str, call: Mapping[str, Any]) -> int:
        """How many of the (normalised) prompt's tokens reach attention, special tokens excluded."""
        tokenizer = self.family_text.tokenizer(self)
        count = len(tokenizer(normalize_prompt(prompt), add_special_tokens=False).input_ids)
        return min(count, self.family_text.max_tokens(self, call))

    def gradient_maps(self, attn_res: tuple[int, int] | None) -> GradientMaps:
        """The maps control: UNet layers at one resolution, or a transformer's one grid pooled to it."""
        if self.model_family.denoiser == "transformer":
            return PooledGradientMaps(attn_res)
        return GradientMaps(attn_res)

    def loop_length(self, call: Mapping[str, Any]) -> int:
        """Number of denoising-loop iterations the scheduler will run (the length of a step-size schedule)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        timesteps, _ = retrieve_timesteps(self.scheduler, call["num_inference_steps"], "cpu", call.get("timesteps"),
                                          call.get("sigmas"))
        return len(timesteps)

    def guided_run(
        self,
        call: Mapping[str, Any],
        loss: MapLoss,
        schedule: GuidanceSchedule,
        attn_res: tuple[int, int] | None,
        active: bool,
        return_attention_maps: bool,
        finish: Finish,
    ) -> MethodRun:
        """The run of one call: guided when ``active``, else the parent untouched (plus a heat-map store)."""
        rows = self.conditional_row_count(call)
        store = InferenceStore() if return_attention_maps else None
        controls: list = [store] if store is not None else []
        arguments: dict[str, Any] = {}
        history: list[dict[str, Any]] = []
        if active:
            maps = self.gradient_maps(attn_res)
            guide, arguments = guidance_arguments(
                self, call, maps, loss, schedule, lambda: self.install([maps], guidance_rows(rows)))
            controls.insert(0, maps)
            history = guide.history

        def done(output: Any) -> Any:
            heatmaps = None if store is None else self.token_heatmaps(store, call, rows)
            return finish(output, heatmaps, history)

        return MethodRun(controls, done, arguments=arguments)

    @staticmethod
    def per_image(call: Mapping[str, Any], per_prompt_values: list) -> list:
        """One entry per image row: each prompt's entry repeated ``num_images_per_prompt`` times."""
        return [value for value in per_prompt_values for _ in range(call.get("num_images_per_prompt") or 1)]

    def binding_run(
        self,
        call: Mapping[str, Any],
        loss_class: Callable[[list], MapLoss],
        per_prompt_rows: list,
        schedule: GuidanceSchedule,
        attn_res: tuple[int, int] | None,
        return_attention_maps: bool,
        finish: Finish,
    ) -> MethodRun:
        """The run of a binding method (Attend-and-Excite, SynGen): the loss gets one row per image, each prompt's
        row repeated ``num_images_per_prompt`` times; guided while any row has targets and the schedule a step."""
        rows = self.per_image(call, per_prompt_rows)
        active = any(rows) and not schedule.off
        return self.guided_run(call, loss_class(rows), schedule, attn_res, active, return_attention_maps, finish)
