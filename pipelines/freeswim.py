"""``FreeSwimPipeline``: training-free high-resolution video with Wan (FreeSwim, Wu et al. 2025).

A subclass of diffusers' ``WanPipeline`` (so ``from_pretrained`` loads any Wan text-to-video checkpoint, Wan 2.2
with ``transformer_2`` included) whose ``__call__`` keeps every parent argument and runs two stages:

1. the stock text-to-video pipeline at the model's native size (``native_height`` x ``native_width``);
2. every frame resized bilinearly to the target size (``height`` x ``width``), VAE-encoded, re-noised to
   ``strength`` and denoised with FreeSwim's attention (:mod:`attnctl.freeswim`): inward-window
   self-attention as large as the native token grid, a full-attention branch whose cross-attention output
   overrides the window branch's, cached every ``cache_interval`` steps.

Passing ``video`` skips stage 1 and upscales that video instead (video-to-video). Processors are swapped only
for the duration of stage 2, with one controller per transformer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_wan_video2video import retrieve_latents
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from attnctl.checks import check_call, pixel_multiple, video_frames
from attnctl.core import AttentionController
from attnctl.freeswim import DUAL, FreeSwimConfig, FreeSwimState, freeswim_controls
from attnctl.freeswim.wan_processor import wan_processor_factory

VideoInput = list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class FreeSwimPipelineOutput(BaseOutput):
    """Frames as ``WanPipelineOutput`` gives them, plus the native-size video they were refined from.

    Args:
        frames: the refined videos at the target size, (batch, frames, height, width, 3) for ``"np"``, a list of
            lists of PIL images for ``"pil"``, (batch, frames, 3, height, width) for ``"pt"``, or latents.
        native_frames: stage 1's videos at the native size in the same format (``"pt"`` when ``frames`` are
            latents), or ``None`` when a ``video`` was given.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    native_frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None = None


class FreeSwimPipeline(WanPipeline):
    """Text-to-video above Wan's native resolution (and video upscaling) with FreeSwim attention."""

    @property
    def freeswim_states(self) -> dict[str, FreeSwimState]:
        """FreeSwim's run state of the last call per transformer (``"transformer"``, ``"transformer_2"``)."""
        return getattr(self, "_freeswim_states", {})

    def check_freeswim_inputs(
        self,
        height: int,
        width: int,
        num_frames: int,
        native_height: int,
        native_width: int,
        window_size: tuple[int, int] | None,
        strength: float,
        refine_flow_shift: float | None,
        video: VideoInput | None,
        latents: torch.Tensor | None,
    ) -> None:
        """Raise a ``ValueError`` naming the argument for every FreeSwim input the method cannot run with."""
        unit = self._pixels_per_token()
        sizes = (("height", height), ("width", width), ("native_height", native_height), ("native_width", native_width))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an integer number of pixels")
            if value < unit or value % unit:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of {unit} (VAE x{self.vae_scale_factor_spatial} "
                    f"times the transformer's patch size); e.g. {max(unit, round(value / unit) * unit)}"
                )
        for name, target, native in (("height", height, native_height), ("width", width, native_width)):
            if target < native:
                raise ValueError(
                    f"{name}={target} is smaller than native_{name}={native}: FreeSwim refines a native-size "
                    "video at a larger (or equal) target size; lower the native size or raise the target"
                )
        temporal = self.vae_scale_factor_temporal
        whole = isinstance(num_frames, int) and not isinstance(num_frames, bool)
        if video is None and (not whole or num_frames < 1 or (num_frames - 1) % temporal):
            nearest = max(1, (num_frames - 1) // temporal * temporal + 1) if whole else 81
            raise ValueError(f"num_frames={num_frames!r} must be {temporal}k+1 for Wan's VAE (e.g. {nearest} or 81)")
        if video is not None and latents is not None:
            raise ValueError("pass either video (upscale it) or latents (stage-1 noise), not both")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r} must be in (0, 1] (the original uses 0.7)")
        if window_size is not None and (
            not isinstance(window_size, (tuple, list))
            or len(window_size) != 2
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in window_size)
        ):
            raise ValueError(f"window_size={window_size!r} must be two positive integers (rows, cols) in tokens")
        if window_size is not None and (window_size[0] > height // unit or window_size[1] > width // unit):
            raise ValueError(
                f"window_size={tuple(window_size)} is larger than the target token grid "
                f"({height // unit}, {width // unit}) of {height} x {width} pixels; pass a smaller window, or leave "
                "window_size=None to derive it from the native size"
            )
        if refine_flow_shift is not None:
            if "flow_shift" not in self.scheduler.config:
                raise ValueError(
                    f"refine_flow_shift={refine_flow_shift} needs a scheduler with a flow_shift setting "
                    f"(UniPCMultistepScheduler); this pipeline has {type(self.scheduler).__name__}"
                )
            if not refine_flow_shift > 0:
                raise ValueError(f"refine_flow_shift={refine_flow_shift!r} must be positive (the original uses 9.0)")

    def _pixels_per_token(self) -> int:
        transformer = self.transformer if self.transformer is not None else self.transformer_2
        return self.vae_scale_factor_spatial * transformer.config.patch_size[1]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        height: int = 1088,
        width: int = 1920,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        max_sequence_length: int = 512,
        video: VideoInput | None = None,
        native_height: int = 480,
        native_width: int = 832,
        window_size: tuple[int, int] | None = None,
        strength: float = 0.7,
        cache_interval: int = 2,
        cache_device: str | torch.device | None = None,
        attention_scale: float | str | None = "entropy",
        dual_path: bool = True,
        guide_uncond: bool = False,
        refine_flow_shift: float | None = None,
        native_num_inference_steps: int | None = None,
    ) -> FreeSwimPipelineOutput | tuple:
        r"""Generate at the native size, then refine at ``height`` x ``width`` with FreeSwim attention.

        All ``WanPipeline`` arguments keep their meaning; ``height``/``width`` are the *target* size (default
        1088 x 1920), ``latents`` is stage 1's initial noise, and ``callback_on_step_end`` runs on stage-2 steps
        (``pipe.num_timesteps`` of them). FreeSwim's arguments:

        Args:
            video: a video to upscale instead of generating one (frames as PIL images, an array or a tensor, as
                ``WanVideoToVideoPipeline`` takes them; 4k+1 frames); stage 1 is skipped.
            native_height, native_width: the model's training resolution (480 x 832 for Wan2.1-1.3B, 720 x 1280
                for 14B); stage 1 runs at it and it sets the window.
            window_size: spatial window (rows, cols) in tokens, at most the target token grid; default from the
                native size, ``(2 * (h0 // 2) + 1, 2 * (w0 // 2) + 1)`` for a native grid of h0 x w0 tokens (full
                attention along an axis it exceeds).
            strength: how far stage 2 re-noises the upscaled video, in (0, 1] (original: 0.7).
            cache_interval: the full branch runs every ``cache_interval`` steps of the conditional pass and its
                cross-attention outputs are reused in between (1 = uncached; original default 2, 5 faster).
            cache_device: where the cache waits between steps: ``None`` beside the activations, ``"cpu"`` to
                offload it (pinned memory, asynchronous copies) when the GPU cannot hold a long high-resolution
                video's cache (tokens x dim per block: about 16 GB at 1088 x 1920 x 81 on Wan2.1-1.3B).
            attention_scale: self-attention softmax scale: ``"entropy"`` (FreeSwim's, default), ``None`` (stock
                ``1/sqrt(head_dim)``) or a number.
            dual_path: run the full branch and its cross-attention override; ``False`` gives plain inward-window
                attention.
            guide_uncond: also run the dual path on the unconditional pass (the original's no-cache variant).
            refine_flow_shift: flow shift of stage 2's scheduler (the original uses 9.0); default: unchanged.
            native_num_inference_steps: stage-1 steps (default ``num_inference_steps``).

        Returns:
            :class:`FreeSwimPipelineOutput`, or ``(frames, native_frames)`` with ``return_dict=False``.
        """
        check_call(self, locals())  # every argument, before any model runs
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_freeswim_inputs(
            height, width, num_frames, native_height, native_width, window_size, strength, refine_flow_shift,
            video, latents,
        )
        self.check_inputs(
            prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, guidance_scale_2,
        )
        config = FreeSwimConfig.from_native_size(
            native_height,
            native_width,
            pixels_per_token=self._pixels_per_token(),
            window=window_size,  # None: derived from the native size, full attention along an axis it exceeds
            attention_scale=attention_scale,
            dual_path=dual_path,
            cache_interval=cache_interval,
            cache_device=cache_device,
            guide_uncond=guide_uncond,
        )
        if self.config.boundary_ratio is not None and guidance_scale_2 is None:
            guidance_scale_2 = guidance_scale
        self._guidance_scale, self._guidance_scale_2 = guidance_scale, guidance_scale_2
        self._attention_kwargs = attention_kwargs
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        native_video = None
        if video is None:
            # stage 1: the stock pipeline; (batch, frames, 3, h, w) in [0, 1] -> (batch, 3, frames, h, w) in [-1, 1]
            frames = WanPipeline.__call__(
                self,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                height=native_height,
                width=native_width,
                num_frames=num_frames,
                num_inference_steps=native_num_inference_steps or num_inference_steps,
                guidance_scale=guidance_scale,
                guidance_scale_2=guidance_scale_2,
                generator=generator,
                latents=latents,
                output_type="pt",
                attention_kwargs=attention_kwargs,
                max_sequence_length=max_sequence_length,
            ).frames
            native_video = frames.permute(0, 2, 1, 3, 4) * 2 - 1
            video = native_video
        else:
            video = self._user_video(video, prompt_embeds.shape[0])
        self._guidance_scale, self._guidance_scale_2 = guidance_scale, guidance_scale_2
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        latents = self._refine(
            upscale_video(video, height, width).to(device),
            prompt_embeds,
            negative_prompt_embeds,
            config,
            num_inference_steps,
            strength,
            refine_flow_shift,
            generator,
            attention_kwargs,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        frames = latents if output_type == "latent" else self._decode(latents, output_type)
        native_frames = None
        if native_video is not None:
            native_type = "pt" if output_type == "latent" else output_type
            native_frames = self.video_processor.postprocess_video(native_video, output_type=native_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, native_frames)
        return FreeSwimPipelineOutput(frames=frames, native_frames=native_frames)

    def _user_video(self, video: VideoInput, batch_size: int) -> torch.Tensor:
        """(batch, 3, frames, h, w) in [-1, 1] from user frames; one video is repeated for every prompt row."""
        video = video_frames("video", video, pixel_multiple(self))  # any mode or depth as 8-bit RGB
        tensor = self.video_processor.preprocess_video(video).to(dtype=torch.float32)
        count = tensor.shape[2]
        if (count - 1) % self.vae_scale_factor_temporal:
            temporal = self.vae_scale_factor_temporal
            raise ValueError(
                f"video has {count} frames; Wan's VAE needs {temporal}k+1 (e.g. {(count - 1) // temporal * temporal + 1})"
            )
        if tensor.shape[0] not in (1, batch_size):
            raise ValueError(f"video holds {tensor.shape[0]} videos for {batch_size} prompt rows; give 1 or {batch_size}")
        return tensor.expand(batch_size, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor

    def _latent_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, shaped (1, channels, 1, 1, 1) like ``latents``."""
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(self.vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return mean, std

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised VAE latents (mode of the posterior) of (batch, 3, frames, h, w) pixels."""
        video = video.to(dtype=self.vae.dtype)
        latents = torch.cat([retrieve_latents(self.vae.encode(clip[None]), sample_mode="argmax") for clip in video])
        mean, std = self._latent_stats(latents)
        return ((latents - mean) / std).to(torch.float32)

    def _decode(self, latents: torch.Tensor, output_type: str):
        latents = latents.to(self.vae.dtype)
        mean, std = self._latent_stats(latents)
        video = self.vae.decode(latents * std + mean, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)

    def _refine(
        self,
        video: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        config: FreeSwimConfig,
        num_inference_steps: int,
        strength: float,
        refine_flow_shift: float | None,
        generator: torch.Generator | list[torch.Generator] | None,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> torch.Tensor:
        """Stage 2: re-noise the upscaled video to ``strength`` and denoise it with FreeSwim attention."""
        device = self._execution_device
        shift = {} if refine_flow_shift is None else {"flow_shift": refine_flow_shift}
        scheduler = type(self.scheduler).from_config(self.scheduler.config, **shift)  # never the registered one
        scheduler.set_timesteps(num_inference_steps, device=device)
        kept = min(int(num_inference_steps * strength), num_inference_steps)
        if kept == 0:
            raise ValueError(
                f"strength={strength} with num_inference_steps={num_inference_steps} leaves no refinement step"
            )
        first = (num_inference_steps - kept) * scheduler.order
        timesteps = scheduler.timesteps[first:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first)
        self._num_timesteps = len(timesteps)

        clean = self._encode(video)
        noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=torch.float32)
        start = timesteps[:1].repeat(clean.shape[0])
        if hasattr(scheduler, "add_noise"):
            latents = scheduler.add_noise(clean, noise, start)
        else:
            latents = scheduler.scale_noise(clean, start, noise)

        models = {name: getattr(self, name) for name in ("transformer", "transformer_2") if getattr(self, name)}
        self._freeswim_states = {name: FreeSwimState(config) for name in models}
        boundary = None
        if self.config.boundary_ratio is not None:
            boundary = self.config.boundary_ratio * scheduler.config.num_train_timesteps
        dtype = next(iter(models.values())).dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        with ExitStack() as stack:
            for name, model in models.items():
                controller = AttentionController(freeswim_controls(self._freeswim_states[name]))
                stack.enter_context(controller.installed(model, processor_factory=wan_processor_factory(model)))
            with self.progress_bar(total=len(timesteps)) as progress_bar:
                for step, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = t
                    low_noise = boundary is not None and t < boundary
                    name = "transformer_2" if low_noise else "transformer"
                    guidance = self._guidance_scale_2 if low_noise else self._guidance_scale
                    passes = {"cond": prompt_embeds}
                    if self.do_classifier_free_guidance:
                        passes["uncond"] = negative_prompt_embeds
                    predictions = {
                        branch: self._freeswim_pass(
                            models[name], self._freeswim_states[name], step, branch, latents, t, embeds,
                            attention_kwargs,
                        )
                        for branch, embeds in passes.items()
                    }
                    noise_pred = predictions["cond"]
                    if self.do_classifier_free_guidance:
                        noise_pred = predictions["uncond"] + guidance * (noise_pred - predictions["uncond"])
                    latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        tensors = {
                            "latents": latents,
                            "prompt_embeds": prompt_embeds,
                            "negative_prompt_embeds": negative_prompt_embeds,
                        }
                        outputs = callback_on_step_end(
                            self, step, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                        )
                        latents = outputs.pop("latents", latents)
                        prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                    progress_bar.update()
        self._current_timestep = None
        return latents

    def _freeswim_pass(
        self,
        model: torch.nn.Module,
        state: FreeSwimState,
        step: int,
        branch: str,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        attention_kwargs: dict[str, Any] | None,
    ) -> torch.Tensor:
        """One transformer pass of ``branch``; dual passes stack window and full rows (same latents)."""
        rows = latents.shape[0]
        if state.begin_pass(step, branch) == DUAL:
            latents, embeds = torch.cat([latents, latents]), torch.cat([embeds, embeds])
        if self.config.expand_timesteps:  # Wan 2.2 TI2V: one timestep per token
            patch = model.config.patch_size
            tokens = latents[0, 0, :: patch[0], :: patch[1], :: patch[2]].numel()
            timestep = t.expand(latents.shape[0], tokens)
        else:
            timestep = t.expand(latents.shape[0])
        with model.cache_context(branch, step_index=step):
            prediction = model(
                hidden_states=latents.to(model.dtype),
                timestep=timestep,
                encoder_hidden_states=embeds,
                attention_kwargs=attention_kwargs,
                return_dict=False,
            )[0]
        return prediction[:rows]  # the window branch; the full branch's own prediction is discarded


def upscale_video(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of every frame of (batch, channels, frames, h, w) to ``height`` x ``width`` (FreeSwim stage 2)."""
    batch, channels, frames = video.shape[:3]
    if tuple(video.shape[-2:]) == (height, width):
        return video
    # (batch, channels, frames, h, w) -> (batch * frames, channels, h, w) and back
    flat = video.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, *video.shape[-2:])
    resized = F.interpolate(flat.float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
