"""Gradient guidance inside diffusers' own denoising loop, without copying it.

:func:`guidance_arguments` gives a pipeline's stock ``__call__`` the arguments that move the latents at two points
diffusers already offers:

* step 0: the initial latents are drawn here with the pipeline's ``prepare_latents`` (same generator, same
  noise), guided at the first timestep and handed to the parent as ``latents``;
* step i+1: ``callback_on_step_end`` of step i receives the latents the scheduler produced and returns them
  guided at the next timestep (after the user's own callback, which still sees the tensors it asked for).
  PixArt-Sigma has only the legacy ``callback(step, timestep, latents)``, whose return value is ignored: there
  the guided latents are written into the loop's tensor in place (``callback_steps=1`` for the parent; the
  user's ``callback`` still runs every ``callback_steps`` steps, before the update).

The guidance forwards need the conditional text states (and SDXL's pooled embeddings and time ids, PixArt's
padding mask); they are encoded here once more with the pipeline's ``encode_prompt``, the same computation
the parent makes.
The method pipeline installs the maps control for the whole call, which restores the processors when
anything raises (:mod:`attnctl.pipelines.guided`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from .maps import GradientMaps
from .update import GuidanceSchedule, LatentGuide, MapLoss


def _is_xl(pipe: Any) -> bool:
    return hasattr(pipe, "text_encoder_2")


def takes_step_end_callback(pipe: Any) -> bool:
    """Whether the diffusers pipeline ``pipe`` runs (its class or first diffusers base) takes
    ``callback_on_step_end``; PixArt-Sigma's has only the legacy ``callback(step, timestep, latents)``."""
    stock = next(c for c in type(pipe).__mro__ if c.__module__.startswith("diffusers.pipelines."))
    return "callback_on_step_end" in inspect.signature(stock.__call__).parameters


def _is_transformer(pipe: Any) -> bool:
    """PixArt-Sigma: a transformer denoiser (called as :func:`_transformer_forward` adapts it)."""
    return getattr(pipe, "unet", None) is None and hasattr(pipe, "transformer")


def _pixart_conditioning(pipe: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    """PixArt-Sigma's conditional forward arguments: T5 states, their padding mask, no micro-conditions."""
    embeds, mask, _, _ = pipe.encode_prompt(
        args.get("prompt"), False, num_images_per_prompt=args.get("num_images_per_prompt") or 1,
        device=pipe._execution_device, prompt_embeds=args.get("prompt_embeds"),
        prompt_attention_mask=args.get("prompt_attention_mask"), clean_caption=args.get("clean_caption", False),
        max_sequence_length=args.get("max_sequence_length", 300),
    )
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def _transformer_forward(transformer: torch.nn.Module) -> Callable:
    """``forward(sample, timestep, **conditioning)`` as the UNet takes it, for PixArt's transformer (whose
    second positional argument is the text states and whose timestep has one entry per row)."""

    def forward(sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return transformer(sample, timestep=timestep, return_dict=False, **kwargs)

    return forward


def conditioning(pipe: Any, args: Mapping[str, Any], rows: int) -> dict[str, Any]:
    """Keyword arguments of a conditional-only denoiser forward for the call ``args`` (SD 1.x/2.x, SDXL,
    PixArt-Sigma)."""
    if _is_transformer(pipe):
        return _pixart_conditioning(pipe, args)
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


def _size(pipe: Any, args: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) in pixels of the latents the parent draws (PixArt: after its resolution binning)."""
    if _is_transformer(pipe):
        default = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        height, width = args.get("height") or default, args.get("width") or default
        if args.get("use_resolution_binning"):
            height, width = pipe.image_processor.classify_height_width_bin(height, width, ratios=_bins(pipe))
        return height, width
    default = getattr(pipe, "default_sample_size", pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return args.get("height") or default, args.get("width") or default


def _bins(pipe: Any) -> dict:
    """PixArt-Sigma's aspect-ratio bins for its transformer's sample size (as its ``__call__`` picks them)."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    bins = {256: "ASPECT_RATIO_2048_BIN", 128: "ASPECT_RATIO_1024_BIN", 64: "ASPECT_RATIO_512_BIN",
            32: "ASPECT_RATIO_256_BIN"}
    size = pipe.transformer.config.sample_size
    if size not in bins:
        raise ValueError(f"use_resolution_binning=True: PixArt-Sigma has no aspect-ratio bins for a transformer "
                         f"of sample_size {size}; pass use_resolution_binning=False")
    return getattr(sigma, bins[size])


def _chain_callback(user: Any, guide: LatentGuide, timesteps: torch.Tensor) -> Callable:
    """``callback_on_step_end`` that runs the user's callback, then guides the latents for the next step."""

    def callback(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if user is not None:
            kwargs = {**kwargs, **(user(pipe, index, timestep, kwargs) or {})}
        if index + 1 < len(timesteps):
            kwargs["latents"] = guide(kwargs["latents"], index + 1, timesteps[index + 1])
        return kwargs

    return callback


def _legacy_callback(user: Any, every: int, guide: LatentGuide, timesteps: torch.Tensor) -> Callable:
    """PixArt's ``callback(step, timestep, latents)``: the user's callback every ``every`` steps, then the latents
    guided for the next step, written in place (the parent ignores what a legacy callback returns)."""

    def callback(index: int, timestep: Any, latents: torch.Tensor) -> None:
        if user is not None and index % every == 0:
            user(index, timestep, latents)
        if index + 1 < len(timesteps):
            latents.copy_(guide(latents, index + 1, timesteps[index + 1]))

    return callback


def _step_arguments(pipe: Any, call: Mapping[str, Any], guide: LatentGuide, timesteps: torch.Tensor) -> dict:
    """The parent arguments that guide every step after the first."""
    if not takes_step_end_callback(pipe):
        if pipe.scheduler.order != 1:
            raise ValueError(f"scheduler={type(pipe.scheduler).__name__} takes {pipe.scheduler.order} model calls "
                             "per step; PixArt's step callback then skips loop indices: use a first-order "
                             "scheduler (DPMSolverMultistepScheduler, DDIMScheduler, EulerDiscreteScheduler)")
        every = call.get("callback_steps", 1)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"callback_steps={every!r} must be a positive integer")
        return {"callback": _legacy_callback(call.get("callback"), every, guide, timesteps), "callback_steps": 1}
    user = call.get("callback_on_step_end")
    return {
        "callback_on_step_end": _chain_callback(user, guide, timesteps),
        "callback_on_step_end_tensor_inputs": _tensor_inputs(
            user, call.get("callback_on_step_end_tensor_inputs") or ["latents"]),
    }


def _tensor_inputs(user: Any, requested: Sequence[str]) -> list[str]:
    names = user.tensor_inputs if isinstance(user, (PipelineCallback, MultiPipelineCallbacks)) else requested
    return list(dict.fromkeys([*names, "latents"]))


def guidance_arguments(
    pipe: Any,
    call: Mapping[str, Any],
    maps: GradientMaps,
    loss: MapLoss,
    schedule: GuidanceSchedule,
    install: Callable[[], AbstractContextManager],
) -> tuple[LatentGuide, dict[str, Any]]:
    """The guide of one call and the parent ``__call__`` arguments that run it: ``latents`` and the step-end callback.

    ``call`` holds the parent's arguments (defaults applied). The initial latents are drawn with the
    pipeline's ``prepare_latents`` (consuming the generator exactly as the parent would) and guided at the first
    timestep inside ``install()`` (a context that installs ``maps`` on the denoiser); the returned callback
    guides every later step and must run with ``maps`` installed too.
    """
    device = pipe._execution_device
    prompt = call.get("prompt")
    prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else call["prompt_embeds"].shape[0]
    rows = prompts * (call.get("num_images_per_prompt") or 1)
    height, width = _size(pipe, call)
    cond = conditioning(pipe, call, rows)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, call.get("num_inference_steps") or 50, device,
                                      call.get("timesteps"), call.get("sigmas"))
    denoiser = _transformer_forward(pipe.transformer) if _is_transformer(pipe) else pipe.unet
    channels = (pipe.transformer if _is_transformer(pipe) else pipe.unet).config.in_channels
    latents = pipe.prepare_latents(rows, channels, height, width, cond["encoder_hidden_states"].dtype, device,
                                   call.get("generator"), call.get("latents"))
    guide = LatentGuide(denoiser, pipe.scheduler, maps, loss, schedule, cond)
    steps = _step_arguments(pipe, call, guide, timesteps)
    with install():
        guided = guide(latents, 0, timesteps[0])
    return guide, {"latents": guided / pipe.scheduler.init_noise_sigma, **steps}  # the parent multiplies it back
