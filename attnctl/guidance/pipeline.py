"""Gradient guidance inside diffusers' own denoising loop, without copying it.

:func:`guided_call` runs a pipeline's stock ``__call__`` and moves the latents at three points diffusers already
offers:

* step 0: the initial latents are drawn here with the pipeline's ``prepare_latents`` (same generator, same
  noise), guided at the first timestep and handed to the parent as ``latents``;
* step i+1: ``callback_on_step_end`` of step i receives the latents the scheduler produced and returns them
  guided at the next timestep (after the user's own callback, which still sees the tensors it asked for).

The guidance forwards need the conditional text states (and SDXL's pooled embeddings and time ids); they
are encoded here once more with the pipeline's ``encode_prompt``, the same computation the parent makes.
The controller is installed for the whole call and restores the processors when anything raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from ..core import AttentionControl, AttentionController
from .maps import GradientMaps
from .update import GuidanceSchedule, LatentGuide, MapLoss


def _is_xl(pipe: Any) -> bool:
    return hasattr(pipe, "text_encoder_2")


def conditioning(pipe: Any, args: dict[str, Any], rows: int) -> dict[str, Any]:
    """Keyword arguments of a conditional-only denoiser forward for the call ``args`` (SD 1.x/2.x, SDXL)."""
    device = pipe._execution_device
    images = args.get("num_images_per_prompt") or 1
    lora_scale = (args.get("cross_attention_kwargs") or {}).get("scale")
    common = dict(num_images_per_prompt=images, do_classifier_free_guidance=False, lora_scale=lora_scale,
                  clip_skip=args.get("clip_skip"))
    if _is_xl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=args.get("prompt"), prompt_2=args.get("prompt_2"), device=device,
            prompt_embeds=args.get("prompt_embeds"), pooled_prompt_embeds=args.get("pooled_prompt_embeds"), **common,
        )
        height, width = _size(pipe, args)
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(
            args.get("original_size") or (height, width), args.get("crops_coords_top_left") or (0, 0),
            args.get("target_size") or (height, width), dtype=embeds.dtype, text_encoder_projection_dim=projection,
        )
        extra = {"added_cond_kwargs": {"text_embeds": pooled.to(device),
                                       "time_ids": time_ids.to(device).repeat(rows, 1)}}
    else:
        embeds, _ = pipe.encode_prompt(args.get("prompt"), device, prompt_embeds=args.get("prompt_embeds"), **common)
        extra = {}
    if pipe.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets (LCM)
        scale = torch.tensor(args.get("guidance_scale", 7.5) - 1).repeat(rows)
        extra["timestep_cond"] = pipe.get_guidance_scale_embedding(
            scale, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=embeds.dtype)
    return {"encoder_hidden_states": embeds.to(device), "cross_attention_kwargs": args.get("cross_attention_kwargs"),
            **extra}


def _size(pipe: Any, args: dict[str, Any]) -> tuple[int, int]:
    default = getattr(pipe, "default_sample_size", pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return args.get("height") or default, args.get("width") or default


def _chain_callback(user: Any, guide: LatentGuide, timesteps: torch.Tensor) -> Callable:
    """``callback_on_step_end`` that runs the user's callback, then guides the latents for the next step."""

    def callback(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if user is not None:
            kwargs = {**kwargs, **(user(pipe, index, timestep, kwargs) or {})}
        if index + 1 < len(timesteps):
            kwargs["latents"] = guide(kwargs["latents"], index + 1, timesteps[index + 1])
        return kwargs

    return callback


def _tensor_inputs(user: Any, requested: Sequence[str]) -> list[str]:
    names = user.tensor_inputs if isinstance(user, (PipelineCallback, MultiPipelineCallbacks)) else requested
    return list(dict.fromkeys([*names, "latents"]))


def guided_call(
    pipe: Any,
    parent_call: Callable[..., Any],
    args: dict[str, Any],
    loss: MapLoss,
    schedule: GuidanceSchedule,
    maps: GradientMaps,
    controls: Sequence[AttentionControl] = (),
) -> tuple[Any, LatentGuide]:
    """Run ``parent_call(**args)`` (the stock ``__call__``) with the latents guided by ``loss``.

    ``args`` are the parent's keyword arguments; ``controls`` are further controls installed for the call
    (e.g. a heat-map store). Returns the parent's output and the guide (its ``history``).
    """
    args = dict(args)
    device = pipe._execution_device
    prompt = args.get("prompt")
    prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else args["prompt_embeds"].shape[0]
    rows = prompts * (args.get("num_images_per_prompt") or 1)
    height, width = _size(pipe, args)
    cond = conditioning(pipe, args, rows)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, args.get("num_inference_steps", 50), device,
                                      args.get("timesteps"), args.get("sigmas"))
    generator = args.get("generator")
    latents = pipe.prepare_latents(rows, pipe.unet.config.in_channels, height, width,
                                   cond["encoder_hidden_states"].dtype, device, generator, args.get("latents"))
    guide = LatentGuide(pipe.unet, pipe.scheduler, maps, loss, schedule, cond)
    user = args.get("callback_on_step_end")
    args["callback_on_step_end_tensor_inputs"] = _tensor_inputs(
        user, args.get("callback_on_step_end_tensor_inputs") or ["latents"])
    args["callback_on_step_end"] = _chain_callback(user, guide, timesteps)
    with AttentionController([maps, *controls]).installed(pipe.unet):
        guided = guide(latents, 0, timesteps[0])
        args["latents"] = guided / pipe.scheduler.init_noise_sigma  # the parent multiplies it back
        output = parent_call(**args)
    return output, guide
