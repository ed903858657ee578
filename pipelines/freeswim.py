"""``FreeSwimPipeline``: training-free high-resolution video with Wan (FreeSwim, Wu et al. 2025).

Three pipelines, each a subclass of its diffusers parent whose ``__call__`` keeps every parent argument:
``FreeSwimPipeline`` (``WanPipeline``: text-to-video, Wan 2.1 and 2.2, TI2V-5B in text mode),
``FreeSwimImageToVideoPipeline`` (``WanImageToVideoPipeline``: Wan 2.1 I2V with CLIP image context, Wan 2.2 I2V
A14B with ``transformer_2``, TI2V-5B) and ``FreeSwimVACEPipeline`` (``WanVACEPipeline``).
``FreeSwimPipeline.from_pretrained`` reads the folder's ``model_index.json`` and returns the matching one (an
unsupported Wan variant is a ``ValueError`` before anything loads). Each call runs two stages:

1. the stock parent pipeline at the model's native size (``native_height`` x ``native_width``);
2. every frame resized bilinearly to the target size (``height`` x ``width``), VAE-encoded, re-noised to
   ``strength`` and denoised with FreeSwim's attention (:mod:`attnctl.freeswim`): inward-window
   self-attention as large as the native token grid, a full-attention branch whose cross-attention output
   overrides the window branch's, cached every ``cache_interval`` steps.

Stage 2 keeps the variant's conditioning, rebuilt at the target size: the I2V image (its 20 mask and condition
channels, or TI2V's clean first frame, and Wan 2.1's CLIP image context), VACE's control video, mask, reference
images and conditioning scale. The window and the cache act on the video tokens (VACE's reference frames are
frames of that grid); the image context only enters cross-attention. With ``FreeSwimPipeline``, passing
``video`` skips stage 1 and upscales that video instead (video-to-video). Processors are swapped only for the
duration of stage 2, with one controller per transformer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    DiffusionPipeline,
    WanImageToVideoPipeline,
    WanPipeline,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_wan_video2video import retrieve_latents
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from attnctl.checks import check_call, pixel_multiple, video_frames, whole_numbers
from attnctl.core import AttentionController
from attnctl.freeswim import DUAL, FreeSwimConfig, FreeSwimState, freeswim_controls, freeswim_pass
from attnctl.freeswim.wan_processor import TEXT_TOKENS, wan_processor_factory

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


RELEASE_FLOW_SHIFT = 9.0  # stage 2's flow shift in the released FreeSwim code (the default here)
SUPPORTED_WAN = {  # model_index.json class name -> FreeSwim pipeline class name
    "WanPipeline": "FreeSwimPipeline",
    "WanVideoToVideoPipeline": "FreeSwimPipeline",
    "FreeSwimPipeline": "FreeSwimPipeline",
    "WanImageToVideoPipeline": "FreeSwimImageToVideoPipeline",
    "FreeSwimImageToVideoPipeline": "FreeSwimImageToVideoPipeline",
    "WanVACEPipeline": "FreeSwimVACEPipeline",
    "FreeSwimVACEPipeline": "FreeSwimVACEPipeline",
}
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


@dataclass
class RefineInputs:
    """What a Wan variant adds to every stage-2 transformer call, built at the target size.

    Args:
        channels: (batch, c, frames, h, w) joined to the latents on the channel axis (I2V: 4 mask + z condition).
        first_frame: (batch, z, frames, h, w) clean condition that replaces the latents where
            ``first_frame_mask`` is 0 (TI2V-5B's first frame, with timestep 0 on its tokens).
        first_frame_mask: (1, 1, frames, h, w), 0 on the conditioned frame and 1 elsewhere.
        batched: transformer keyword arguments with one row per latent row (Wan 2.1's image context, VACE's
            control latents); dual passes stack them twice like the latents.
        shared: transformer keyword arguments for all rows (VACE's per-layer conditioning scale).
        prefix: (batch, z, r, h, w) clean latents of extra leading frames (VACE's reference images), denoised with
            the video and dropped before decoding.
    """

    channels: torch.Tensor | None = None
    first_frame: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    batched: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    prefix: torch.Tensor | None = None


class FreeSwimStages:
    """The two FreeSwim stages, shared by the text-to-video, image-to-video and VACE pipelines.

    Mixed in before the diffusers parent; a variant overrides :meth:`_check_variant_components`,
    :meth:`_check_variant_inputs` and :meth:`_refine_inputs`.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a Wan folder or Hub id as the FreeSwim pipeline of its variant (picked from ``model_index.json``).

        ``FreeSwimPipeline.from_pretrained`` returns whichever variant the folder holds; a variant class loads
        only its own kind. Raises ``ValueError`` for a Wan variant FreeSwim does not support.
        """
        config = DiffusionPipeline.load_config(
            pretrained_model_name_or_path, **{key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        )
        name = config.get("_class_name")
        if name not in SUPPORTED_WAN:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} holds a {name}; FreeSwim supports {sorted(set(SUPPORTED_WAN))} "
                "(Wan 2.1/2.2 text-to-video, image-to-video, TI2V-5B and VACE)"
            )
        target = globals()[SUPPORTED_WAN[name]]
        if cls is not FreeSwimPipeline and target is not cls:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} holds a {name}, which loads as {target.__name__}, not "
                f"{cls.__name__}; use FreeSwimPipeline.from_pretrained to pick the variant"
            )
        pipeline = DiffusionPipeline.from_pretrained.__func__(target, pretrained_model_name_or_path, **kwargs)
        pipeline._check_variant_components()
        return pipeline

    def _transformers(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in ("transformer", "transformer_2") if getattr(self, name, None)}

    def _check_variant_components(self) -> None:
        """Text-to-video: every transformer takes the VAE's latent channels (no image conditioning)."""
        z_dim = self.vae.config.z_dim
        for name, model in self._transformers().items():
            if model.config.in_channels != z_dim or isinstance(model, WanVACETransformer3DModel):
                raise ValueError(
                    f"{name} ({type(model).__name__}, in_channels={model.config.in_channels}) is not a Wan "
                    f"text-to-video transformer for a {z_dim}-channel VAE; load image-to-video and VACE folders with "
                    "FreeSwimPipeline.from_pretrained, which picks their pipeline"
                )

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
        video: VideoInput | None,
        latents: torch.Tensor | None,
        refine_flow_shift: float | None,
    ) -> None:
        """Raise a ``ValueError`` naming the arguments for every combination FreeSwim cannot run with.

        Each argument's own limits (sizes a multiple of the pixels per token, ``strength`` in (0, 1], a positive
        ``refine_flow_shift`` ...) are checked before, by :func:`~attnctl.checks.check_call`; this checks how
        they fit together and with the loaded model.
        """
        unit = self._pixels_per_token()
        for name, target, native in (("height", height, native_height), ("width", width, native_width)):
            if target is None:
                raise ValueError(f"{name}=None: FreeSwim needs a target size (its default is 1088 x 1920)")
            if target < native:
                raise ValueError(
                    f"{name}={target} is smaller than native_{name}={native}: FreeSwim refines a native-size "
                    "video at a larger (or equal) target size; lower the native size or raise the target"
                )
        if native_height == native_width == unit:
            raise ValueError(
                f"native_height={native_height} and native_width={native_width} make a native grid of one "
                f"{unit}-pixel token; FreeSwim's entropy scale needs at least 2 (raise either to {2 * unit})"
            )
        temporal = self.vae_scale_factor_temporal
        if video is None and (num_frames - 1) % temporal:
            nearest = max(1, (num_frames - 1) // temporal * temporal + 1)
            raise ValueError(f"num_frames={num_frames!r} must be {temporal}k+1 for Wan's VAE (e.g. {nearest} or 81)")
        if video is not None and latents is not None:
            raise ValueError("pass either video (upscale it) or latents (stage-1 noise), not both")
        if window_size is not None and (window_size[0] > height // unit or window_size[1] > width // unit):
            raise ValueError(
                f"window_size={tuple(window_size)} is larger than the target token grid "
                f"({height // unit}, {width // unit}) of {height} x {width} pixels; pass a smaller window, or leave "
                "window_size=None to derive it from the native size"
            )
        if refine_flow_shift is not None and self._flow_shift_name() is None:
            raise ValueError(
                f"refine_flow_shift={refine_flow_shift} needs a scheduler with a flow shift setting "
                f"(UniPCMultistepScheduler's flow_shift, FlowMatchEulerDiscreteScheduler's shift); this pipeline "
                f"has {type(self.scheduler).__name__}: pass refine_flow_shift=None to keep its schedule"
            )

    def _flow_shift_name(self) -> str | None:
        """The scheduler config entry that holds the flow shift, if it has one."""
        return next((name for name in ("flow_shift", "shift") if name in self.scheduler.config), None)

    def _pixels_per_token(self) -> int:
        return self.vae_scale_factor_spatial * self._patch_size()[1]

    def _patch_size(self) -> tuple[int, int, int]:
        return tuple(next(iter(self._transformers().values())).config.patch_size)

    def _check_variant_inputs(self, prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                              callback_on_step_end_tensor_inputs, guidance_scale_2, conditions) -> None:
        """The parent pipeline's own input checks, at the target size."""
        self.check_inputs(
            prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, guidance_scale_2,
        )

    def _refine_inputs(self, conditions: dict, rows: int, height: int, width: int, num_frames: int, generator,
                       dtype: torch.dtype) -> RefineInputs:
        """Text-to-video adds nothing to the stage-2 transformer calls."""
        return RefineInputs()

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
        refine_flow_shift: float | None = RELEASE_FLOW_SHIFT,
        native_num_inference_steps: int | None = None,
        conditions: dict[str, Any] | None = None,
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
            refine_flow_shift: flow shift of stage 2's scheduler; default ``RELEASE_FLOW_SHIFT`` (9.0, the released
                code's), ``None`` keeps the pipeline scheduler's own (3.0 in Wan 2.1 480p checkpoints).
            native_num_inference_steps: stage-1 steps (default ``num_inference_steps``).
            conditions: the variant's own inputs, set by the image-to-video and VACE subclasses' ``__call__``
                (``image``, ``video``, ``mask`` ...); text-to-video takes none.

        Returns:
            :class:`FreeSwimPipelineOutput`, or ``(frames, native_frames)`` with ``return_dict=False``.
        """
        check_call(self, locals())  # every argument, before any model runs
        whole = whole_numbers(locals())  # 64.0 (as web forms send) passes the checks; diffusers' shapes need ints
        height, width, native_height, native_width, num_frames, num_inference_steps, cache_interval = (
            whole[name] for name in ("height", "width", "native_height", "native_width", "num_frames",
                                     "num_inference_steps", "cache_interval")
        )
        native_num_inference_steps, num_videos_per_prompt = (
            whole["native_num_inference_steps"], whole["num_videos_per_prompt"]
        )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_freeswim_inputs(
            height, width, num_frames, native_height, native_width, window_size, video, latents, refine_flow_shift
        )
        conditions = dict(conditions or {})
        self._check_variant_components()
        self._check_variant_inputs(
            prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, guidance_scale_2, conditions,
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
            frames = super().__call__(  # the diffusers parent, with the variant's own inputs
                **conditions,
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
        dtype = next(iter(self._transformers().values())).dtype
        inputs = self._refine_inputs(conditions, prompt_embeds.shape[0], height, width, num_frames, generator, dtype)
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
            inputs,
        )
        if output_type == "latent":
            frames = latents  # VACE's reference frames included, as WanVACEPipeline returns its latents
        else:
            prefix = 0 if inputs.prefix is None else inputs.prefix.shape[2]
            frames = self._decode(latents[:, :, prefix:], output_type)
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
        inputs: RefineInputs,
    ) -> torch.Tensor:
        """Stage 2: re-noise the upscaled video to ``strength`` and denoise it with FreeSwim attention."""
        device = self._execution_device
        shift = {} if refine_flow_shift is None else {self._flow_shift_name(): refine_flow_shift}
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
        if inputs.prefix is not None:  # (batch, z, r + frames, h, w): reference frames first, as VACE lays them out
            clean = torch.cat([inputs.prefix.to(clean), clean], dim=2)
        noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=torch.float32)
        start = timesteps[:1].repeat(clean.shape[0])
        if hasattr(scheduler, "add_noise"):
            latents = scheduler.add_noise(clean, noise, start)
        else:
            latents = scheduler.scale_noise(clean, start, noise)

        models = self._transformers()
        self._freeswim_states = {name: FreeSwimState(config) for name in models}
        boundary = None
        if self.config.boundary_ratio is not None:
            boundary = self.config.boundary_ratio * scheduler.config.num_train_timesteps
        dtype = next(iter(models.values())).dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        controllers = {name: AttentionController(freeswim_controls(self._freeswim_states[name])) for name in models}
        with ExitStack() as stack:
            for name, model in models.items():
                stack.enter_context(controllers[name].installed(model, processor_factory=wan_processor_factory(model)))
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
                            models[name], controllers[name], self._freeswim_states[name], step, branch, latents, t,
                            embeds, attention_kwargs, inputs,
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
        if inputs.first_frame is not None:
            latents = (1 - inputs.first_frame_mask) * inputs.first_frame + inputs.first_frame_mask * latents
        return latents

    def _freeswim_pass(
        self,
        model: torch.nn.Module,
        controller: AttentionController,
        state: FreeSwimState,
        step: int,
        branch: str,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        attention_kwargs: dict[str, Any] | None,
        inputs: RefineInputs,
    ) -> torch.Tensor:
        """One transformer pass of ``branch``; a dual pass declares and stacks its window and full rows (same
        inputs)."""
        rows = latents.shape[0]
        hidden, timestep = self._model_input(model, latents, t, inputs)
        batched = inputs.batched
        with freeswim_pass(model, controller, state, step, branch) as mode:
            if mode == DUAL:
                hidden, timestep, embeds = (torch.cat([x, x]) for x in (hidden, timestep, embeds))
                batched = {name: torch.cat([x, x]) for name, x in batched.items()}
            prediction = model(
                hidden_states=hidden.to(model.dtype),
                timestep=timestep,
                encoder_hidden_states=embeds,
                attention_kwargs=attention_kwargs,
                return_dict=False,
                **batched,
                **inputs.shared,
            )[0]
        return prediction[:rows]  # the window branch; the full branch's own prediction is discarded

    def _model_input(
        self, model: torch.nn.Module, latents: torch.Tensor, t: torch.Tensor, inputs: RefineInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's ``hidden_states`` and ``timestep`` for ``latents`` at ``t``, as the parent builds them.

        I2V joins its condition channels; TI2V-5B (``expand_timesteps``) puts the clean first frame in place and
        gives one timestep per token, 0 on that frame.
        """
        rows = latents.shape[0]
        if inputs.channels is not None:
            return torch.cat([latents, inputs.channels.to(latents)], dim=1), t.expand(rows)
        if not self.config.get("expand_timesteps", False):
            return latents, t.expand(rows)
        mask = inputs.first_frame_mask
        if mask is None:
            mask = torch.ones_like(latents[:1, :1])
        else:
            latents = (1 - mask) * inputs.first_frame + mask * latents
        patch = model.config.patch_size
        per_token = (mask[0, 0, :: patch[0], :: patch[1], :: patch[2]] * t).flatten()  # (tokens,)
        return latents, per_token.expand(rows, -1)


class FreeSwimPipeline(FreeSwimStages, WanPipeline):
    """Text-to-video above Wan's native resolution (and video upscaling) with FreeSwim attention.

    ``FreeSwimPipeline.from_pretrained`` also loads image-to-video and VACE folders, as
    :class:`FreeSwimImageToVideoPipeline` and :class:`FreeSwimVACEPipeline`.
    """


class FreeSwimImageToVideoPipeline(FreeSwimStages, WanImageToVideoPipeline):
    """Image-to-video above Wan's native resolution with FreeSwim attention; the image conditioning is kept.

    Stage 1 is the stock ``WanImageToVideoPipeline`` at the native size; stage 2 rebuilds the condition at the
    target size: Wan 2.1 and 2.2 A14B join 4 mask + z condition channels (the image VAE-encoded as the first of
    ``num_frames``, at the target size), Wan 2.1 adds its CLIP image context to every cross-attention, TI2V-5B
    (``expand_timesteps``) keeps the clean image latent as the first frame.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | torch.Tensor,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        *,
        last_image: PIL.Image.Image | torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> FreeSwimPipelineOutput | tuple:
        """``image``, ``last_image`` and ``image_embeds`` as ``WanImageToVideoPipeline`` takes them; every other
        argument as :meth:`FreeSwimPipeline.__call__` (``max_sequence_length`` stays 512 on Wan 2.1, whose
        cross-attention finds the image tokens by that length)."""
        length = kwargs.get("max_sequence_length", 512)
        embeds = kwargs.get("prompt_embeds")
        if self.transformer is not None and self.transformer.config.image_dim is not None and (
            length != TEXT_TOKENS or (embeds is not None and embeds.shape[1] != TEXT_TOKENS)
        ):
            got = length if embeds is None else tuple(embeds.shape)
            raise ValueError(
                f"max_sequence_length={got} (or prompt_embeds of that length): Wan 2.1 image-to-video needs "
                f"{TEXT_TOKENS} text tokens, its cross-attention takes the tokens before the last {TEXT_TOKENS} as image context"
            )
        conditions = dict(image=image, last_image=last_image, image_embeds=image_embeds)
        return FreeSwimStages.__call__(self, prompt, negative_prompt, conditions=conditions, **kwargs)

    def _check_variant_components(self) -> None:
        """36-channel (2.1, 2.2 A14B) or z-channel first-frame (TI2V-5B) transformers; CLIP when ``image_dim``."""
        z_dim = self.vae.config.z_dim
        expected = z_dim if self.config.expand_timesteps else 2 * z_dim + self.vae_scale_factor_temporal
        for name, model in self._transformers().items():
            if model.config.in_channels != expected or isinstance(model, WanVACETransformer3DModel):
                raise ValueError(
                    f"{name} ({type(model).__name__}, in_channels={model.config.in_channels}) is not a Wan "
                    f"image-to-video transformer: expected in_channels={expected} for a {z_dim}-channel VAE "
                    f"(expand_timesteps={self.config.expand_timesteps})"
                )
        if self.transformer is not None and self.transformer.config.image_dim is not None and (
            self.image_encoder is None or self.image_processor is None
        ):
            raise ValueError(
                "transformer has image_dim set (Wan 2.1 I2V) but the pipeline has no image_encoder/image_processor "
                "to compute its CLIP image context"
            )

    def _check_variant_inputs(self, prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                              callback_on_step_end_tensor_inputs, guidance_scale_2, conditions) -> None:
        self.check_inputs(
            prompt, negative_prompt, conditions["image"], height, width, prompt_embeds, negative_prompt_embeds,
            conditions["image_embeds"], callback_on_step_end_tensor_inputs, guidance_scale_2,
        )

    def _refine_inputs(self, conditions: dict, rows: int, height: int, width: int, num_frames: int, generator,
                       dtype: torch.dtype) -> RefineInputs:
        """The parent's ``prepare_latents`` condition at the target size (its noise is not drawn), and the image
        context of Wan 2.1."""
        device = self._execution_device
        image, last_image = conditions["image"], conditions["last_image"]
        pixels = self.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        if last_image is not None:
            last_image = self.video_processor.preprocess(last_image, height=height, width=width).to(
                device, dtype=torch.float32
            )
        z_dim, spatial = self.vae.config.z_dim, self.vae_scale_factor_spatial
        frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        placeholder = torch.zeros(rows, z_dim, frames, height // spatial, width // spatial, device=device)
        prepared = self.prepare_latents(
            pixels, rows, z_dim, height, width, num_frames, torch.float32, device, generator, placeholder, last_image
        )
        inputs = RefineInputs()
        if self.config.expand_timesteps:
            inputs.first_frame, inputs.first_frame_mask = prepared[1], prepared[2]
        else:
            inputs.channels = prepared[1]
        if self.transformer is not None and self.transformer.config.image_dim is not None:
            embeds = conditions["image_embeds"]
            if embeds is None:
                embeds = self.encode_image(image if last_image is None else [image, conditions["last_image"]], device)
            inputs.batched["encoder_hidden_states_image"] = embeds.repeat(rows, 1, 1).to(dtype)
        return inputs


class FreeSwimVACEPipeline(FreeSwimStages, WanVACEPipeline):
    """VACE (control video, mask, reference images) above Wan's native resolution with FreeSwim attention.

    Stage 1 is the stock ``WanVACEPipeline`` at the native size; stage 2 encodes the control video and mask
    resized to the target size (bilinear, nearest for the mask) and the reference images on target-size canvases,
    as the parent does, and denoises the reference frames with the video (their clean latents in front).
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        video: list[PIL.Image.Image] | None = None,
        mask: list[PIL.Image.Image] | None = None,
        reference_images: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        conditioning_scale: float | list[float] | torch.Tensor = 1.0,
        **kwargs,
    ) -> FreeSwimPipelineOutput | tuple:
        """``video`` (the control video), ``mask``, ``reference_images`` and ``conditioning_scale`` as
        ``WanVACEPipeline`` takes them; every other argument as :meth:`FreeSwimPipeline.__call__`. With
        ``output_type="latent"`` the latents keep the reference frames in front, as the parent's do. One video per
        call, as the parent makes: a list of prompts or ``num_videos_per_prompt`` > 1 is a ``ValueError``."""
        embeds = kwargs.get("prompt_embeds")
        prompts = len(prompt) if isinstance(prompt, list) else 1 if embeds is None else embeds.shape[0]
        per_prompt = kwargs.get("num_videos_per_prompt", 1)
        if prompts != 1 or per_prompt != 1:
            raise ValueError(
                f"{prompts} prompts with num_videos_per_prompt={per_prompt!r}: WanVACEPipeline makes one video per "
                "call (its control video, mask and references are one); pass one prompt and num_videos_per_prompt=1"
            )
        conditions = dict(
            video=video, mask=mask, reference_images=reference_images, conditioning_scale=conditioning_scale
        )
        return FreeSwimStages.__call__(self, prompt, negative_prompt, conditions=conditions, **kwargs)

    def _check_variant_components(self) -> None:
        for name, model in self._transformers().items():
            if not isinstance(model, WanVACETransformer3DModel):
                raise ValueError(f"{name} is a {type(model).__name__}; a VACE pipeline needs WanVACETransformer3DModel")

    def _check_variant_inputs(self, prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                              callback_on_step_end_tensor_inputs, guidance_scale_2, conditions) -> None:
        self.check_inputs(
            prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, conditions["video"], conditions["mask"],
            conditions["reference_images"], guidance_scale_2,
        )
        self._conditioning_scale(conditions["conditioning_scale"], torch.float32)

    def _conditioning_scale(self, scale: float | list[float] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One scale per VACE layer, (layers,), as the parent expands it."""
        layers = len(next(iter(self._transformers().values())).config.vace_layers)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = [float(scale)] * layers
        scale = torch.as_tensor(scale, dtype=dtype, device=self._execution_device)
        if scale.shape != (layers,):
            raise ValueError(
                f"conditioning_scale={scale.tolist()} must be a number or one number per VACE layer ({layers})"
            )
        return scale

    def _refine_inputs(self, conditions: dict, rows: int, height: int, width: int, num_frames: int, generator,
                       dtype: torch.dtype) -> RefineInputs:
        """Control latents (inactive | reactive | 8 x 8 mask channels) at the target size, one row per video."""
        device = self._execution_device
        video, mask, _ = self.preprocess_conditions(
            conditions["video"], conditions["mask"], None, 1, height, width, num_frames, torch.float32, device
        )
        if tuple(video.shape[-2:]) != (height, width):  # the parent keeps a smaller control video's own size
            video = upscale_video(video, height, width)
            mask = upscale_video(mask, height, width, mode="nearest-exact")
        _, _, references = self.preprocess_conditions(
            None, None, conditions["reference_images"], 1, height, width, num_frames, torch.float32, device
        )
        control = torch.cat(
            [
                self.prepare_video_latents(video, mask, references, generator, device),
                self.prepare_masks(mask, references, generator),
            ],
            dim=1,
        )  # (1, 2 z + 64, r + frames, h, w)
        z_dim, count = self.vae.config.z_dim, len(references[0])
        return RefineInputs(
            batched={"control_hidden_states": control.to(dtype).expand(rows, *control.shape[1:])},
            shared={"control_hidden_states_scale": self._conditioning_scale(conditions["conditioning_scale"], dtype)},
            prefix=control[:, :z_dim, :count].float().expand(rows, -1, -1, -1, -1) if count else None,
        )


def upscale_video(video: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize every frame of (batch, channels, frames, h, w) to ``height`` x ``width`` (bilinear: FreeSwim stage 2)."""
    batch, channels, frames = video.shape[:3]
    if tuple(video.shape[-2:]) == (height, width):
        return video
    # (batch, channels, frames, h, w) -> (batch * frames, channels, h, w) and back
    flat = video.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, *video.shape[-2:])
    corners = {"align_corners": False} if mode == "bilinear" else {}
    resized = F.interpolate(flat.float(), size=(height, width), mode=mode, **corners)
    return resized.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
