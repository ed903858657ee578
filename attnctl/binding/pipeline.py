"""What Attend-and-Excite and SynGen pipelines share: one guided call, heat maps, per-prompt word selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core import AttentionController, AttentionStore, TokenHeatmaps
from ..guidance import GradientMaps, GuidanceSchedule, MapLoss, guided_call


class InferenceStore(AttentionStore):
    """Heat maps of the images as drawn: the stock denoiser passes only, not the guidance forwards."""

    def applies_to(self, call) -> bool:
        return not torch.is_grad_enabled() and super().applies_to(call)


def prompt_list(prompt: str | list[str] | None) -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return prompt
    raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")


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


class GuidedMethodMixin:
    """Runs the family pipeline's own ``__call__`` with latents guided by a loss (see :mod:`attnctl.guidance`)."""

    def _guided(
        self,
        args: dict[str, Any],
        loss: MapLoss,
        schedule: GuidanceSchedule,
        attn_res: tuple[int, int] | None,
        active: bool,
        return_attention_maps: bool,
    ) -> tuple[Any, list[dict[str, Any]], list[TokenHeatmaps] | None]:
        """(parent output, guidance log, heat maps). With ``active`` False the parent runs untouched."""
        parent_call = super().__call__  # the family pipeline's __call__ (next in the MRO)
        store = InferenceStore() if return_attention_maps else None
        args = {**args, "return_dict": True}
        history: list[dict[str, Any]] = []
        if active:
            output, guide = guided_call(self, parent_call, args, loss, schedule, GradientMaps(attn_res),
                                        [store] if store else [])
            history = guide.history
        elif store is not None:
            with AttentionController([store]).installed(self.unet):
                output = parent_call(**args)
        else:
            output = parent_call(**args)
        return output, history, self._heatmaps_of(store, args) if store is not None else None

    def _loop_length(self, kwargs: dict[str, Any]) -> int:
        """Number of loop iterations the scheduler will run (the length of the step-size schedule)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        timesteps, _ = retrieve_timesteps(self.scheduler, kwargs.get("num_inference_steps", 50), "cpu",
                                          kwargs.get("timesteps"), kwargs.get("sigmas"))
        return len(timesteps)

    def _heatmaps_of(self, store: AttentionStore, args: dict[str, Any]) -> list[TokenHeatmaps]:
        from attnctl.pipelines.structured import StructuredDiffusionPipeline

        prompts = prompt_list(args.get("prompt"))
        images = (len(prompts) if prompts else args["prompt_embeds"].shape[0]) * (args.get("num_images_per_prompt") or 1)
        size = getattr(self, "default_sample_size", self.unet.config.sample_size) * self.vae_scale_factor
        # one labelling of store maps for every method pipeline (the structured pipeline's)
        return StructuredDiffusionPipeline._heatmaps(
            self, store, prompts, images, args.get("height") or size, args.get("width") or size
        )
