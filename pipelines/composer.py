"""``PrimeComposerPipeline``: training-free image composition with attention steering (Wang et al., ACM MM 2024).

A subclass of diffusers' ``StableDiffusionImg2ImgPipeline`` (same components, so ``from_pretrained`` loads any SD
1.x/2.x checkpoint). A call inverts the background and the subject canvas with DPM-Solver++, then samples the target
box with the Correlation Diffuser's self-attention logits injected into the generator, region-constrained
cross-attention on the subject words, and the background trajectory restored outside the box after each step.
Processors are swapped only inside the call (``AttentionController.installed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from attnctl.checks import check_call
from attnctl.composer import (
    AUTO,
    CORRELATION,
    EXCEPTIONAL_TOKEN_ID,
    GENERATOR,
    ComposerConfig,
    CorrelationMaps,
    CorrelationRecorder,
    DiscreteVPSchedule,
    Placement,
    RegionConstrainedCrossAttention,
    SubjectInjection,
    TokenRegion,
    Trajectories,
    check_same_size,
    check_token_indices,
    compose,
    conditional_rows,
    data_from_output,
    initial_latents,
    invert,
    phases_for,
    prepare,
    target_box_from,
    to_bool_mask,
    to_rgb_image,
    unet_grids,
    words_token_indices,
    working_size,
)
from attnctl.core import AttentionController, stacked

from .base import FamilyPipelineMixin

INVERSION = "inversion"
logger = logging.get_logger(__name__)


@dataclass
class PrimeComposerPipelineOutput(BaseOutput):
    """The composite and the masks it was made with.

    Args:
        images: the composites (list of PIL images, numpy array or tensor, per ``output_type``).
        nsfw_content_detected: per-image flags from the safety checker, or ``None``.
        masks: pixel masks at the working size, as ``L`` images: ``"subject"`` (the subject cells in the
            composite), ``"box"`` (the composition box: the generator's region), ``"reference"`` (the subject on
            its canvas), ``"target"`` (the user's box).
        layer_masks: per token grid (height, width) of the UNet, a uint8 map: 0 background, 1 box, 2 subject.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    masks: dict[str, PIL.Image.Image]
    layer_masks: dict[tuple[int, int], torch.Tensor]


class _UNetComposer:
    """The pipeline's UNet seen by the sampling loop: correlation pass, guided prediction, inversion prediction."""

    def __init__(self, pipe: PrimeComposerPipeline, controller: AttentionController, injection: SubjectInjection,
                 schedule: DiscreteVPSchedule, embeds: dict[str, torch.Tensor]) -> None:
        self.pipe, self.controller, self.injection, self.schedule, self.embeds = (
            pipe, controller, injection, schedule, embeds)

    def _output(self, latents: torch.Tensor, t: float, embeds: torch.Tensor, branch: str, *parts: str) -> torch.Tensor:
        """One UNet pass, declared to the controller as ``branch`` with the batch rows ``parts`` (in order)."""
        timestep = torch.tensor(self.schedule.model_time(t), device=latents.device, dtype=torch.float32)
        with self.controller.declared(branch, stacked(*parts)):
            return self.pipe.unet(latents, timestep, encoder_hidden_states=embeds.expand(latents.shape[0], -1, -1),
                                  cross_attention_kwargs=self.pipe.cross_attention_kwargs, return_dict=False)[0]

    def _data(self, output: torch.Tensor, latents: torch.Tensor, t: float) -> torch.Tensor:
        return data_from_output(output, latents, self.schedule.alpha(t), self.schedule.sigma(t),
                                self.pipe.scheduler.config.prediction_type)

    def correlate(self, reference: torch.Tensor, composite: torch.Tensor | None, t: float) -> None:
        batch = reference if composite is None else torch.cat([composite, reference])
        parts = ("reference",) if composite is None else ("composite", "reference")
        self._output(batch, t, self.embeds["cond"], CORRELATION, *parts)  # only the recorded logits matter

    def predict(self, latents: torch.Tensor, t: float, inject: bool) -> torch.Tensor:
        self.injection.active = inject
        guided = self.pipe.do_classifier_free_guidance
        batch = torch.cat([latents] * 2) if guided else latents
        embeds = torch.cat([self.embeds["uncond"], self.embeds["cond"]]) if guided else self.embeds["cond"]
        output = self._output(batch, t, embeds, GENERATOR, *(("uncond", "cond") if guided else ("cond",)))
        self.injection.active = False
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + self.pipe.guidance_scale * (cond - uncond)
        return self._data(output, latents, t)

    def predict_inversion(self, latents: torch.Tensor, t: float) -> torch.Tensor:
        inverted = self._output(latents, t, self.embeds["inversion"], INVERSION, "background", "reference")
        return self._data(inverted, latents, t)


class ComposerMethod(FamilyPipelineMixin):
    """PrimeComposer's family dispatch: ``from_pretrained`` refuses the families it has no variant for (SDXL:
    docs/composer.md says what is missing) before loading anything."""


class PrimeComposerPipeline(ComposerMethod, StableDiffusionImg2ImgPipeline):
    """Place a subject (image + mask) into a background box; loads any SD 1.x/2.x checkpoint with
    ``from_pretrained``."""

    family = "sd"

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "background_latents"]

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: the VAE factor times the UNet's total downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def resolve_inversion_token(self, token_id: int | str | None) -> int | None:
        """``"auto"``: TF-ICON's token (7788) where the vocabulary has it and the text encoder has position
        embeddings to switch off, else ``None`` (the empty prompt); anything else is returned as given."""
        if token_id != AUTO:
            return token_id
        if EXCEPTIONAL_TOKEN_ID < len(self.tokenizer) and self._position_embedding() is not None:
            return EXCEPTIONAL_TOKEN_ID
        logger.info("inversion_token_id='auto': token %d is not in this model's vocabulary; inverting with the "
                    "empty prompt", EXCEPTIONAL_TOKEN_ID)
        return None

    def _position_embedding(self) -> torch.nn.Module | None:
        return next((m for name, m in self.text_encoder.named_modules()
                     if name.endswith("embeddings.position_embedding")), None)

    def encode_inversion_prompt(self, token_id: int | str | None, device: torch.device) -> torch.Tensor:
        """The inversion condition: TF-ICON's "exceptional prompt" (``token_id`` repeated, token embeddings only,
        no position embeddings, through the text encoder), or the empty prompt when ``token_id`` is ``None``
        (``"auto"``: see :meth:`resolve_inversion_token`)."""
        token_id = self.resolve_inversion_token(token_id)
        if token_id is None:
            return self.encode_prompt("", device, 1, False)[0]
        vocabulary = len(self.tokenizer)
        if not 0 <= token_id < vocabulary:
            raise ValueError(f"inversion_token_id={token_id} is not in the tokenizer's vocabulary of {vocabulary} "
                             f"tokens; pass an id below {vocabulary}, or None to invert with the empty prompt")
        position = self._position_embedding()
        if position is None:
            raise ValueError("the text encoder has no embeddings.position_embedding module to switch off for the "
                             "exceptional prompt; pass inversion_token_id=None")
        ids = torch.full((1, self.tokenizer.model_max_length), token_id, dtype=torch.long, device=device)
        handle = position.register_forward_hook(lambda module, args, output: torch.zeros_like(output))
        try:
            return self.text_encoder(ids)[0].to(self.unet.dtype)
        finally:
            handle.remove()

    def encode_image_latents(self, image: PIL.Image.Image, sample: bool, generator: torch.Generator | None,
                             device: torch.device) -> torch.Tensor:
        """VAE latent of ``image`` (scaled): a posterior sample (the release) or its mode."""
        pixels = self.image_processor.preprocess(image).to(device=device, dtype=self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        return (latents * self.vae.config.scaling_factor).to(self.unet.dtype)

    def _subject_tokens(self, prompt, subject_words, subject_token_indices, required: bool) -> list[int]:
        if subject_token_indices is not None:
            return check_token_indices(subject_token_indices, self.tokenizer.model_max_length,
                                       "subject_token_indices")
        if subject_words is None:
            if required:
                raise ValueError("region-constrained cross-attention needs the subject: pass subject_words (words "
                                 "of the prompt) or subject_token_indices, or rca=False")
            return []
        if not isinstance(prompt, str):
            raise ValueError("subject_words needs the prompt text; with prompt_embeds pass subject_token_indices")
        return words_token_indices(self.tokenizer, prompt, subject_words, "subject_words")

    def _canvas_size(self, background: PIL.Image.Image, height: int | None, width: int | None,
                     faithful: bool) -> tuple[int, int]:
        if not faithful:
            return working_size(background, height, width, self.size_multiple)
        size = height or width or self.unet.config.sample_size * self.vae_scale_factor
        if (height or size) != (width or size):
            raise ValueError(f"faithful=True uses the release's square canvas; got height={height}, width={width}: "
                             "pass equal sizes or faithful=False")
        return working_size(background, size, size, self.size_multiple)

    def _check_call(self, prompt, prompt_embeds, steps, order, generator, seed, callback_inputs, unsupported):
        for name, (value, neutral) in unsupported.items():
            if value != neutral:
                raise ValueError(f"{name}={value!r} is not supported by PrimeComposerPipeline; leave it at {neutral!r}")
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass prompt or prompt_embeds")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt must be one string (one composition per call); got {type(prompt).__name__}")
        if steps < order:
            raise ValueError(f"num_inference_steps={steps} must be at least solver_order={order}")
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if isinstance(generator, list):
            raise ValueError("generator must be one torch.Generator (one composition per call), not a list")
        for name in callback_inputs or []:
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback_on_step_end_tensor_inputs has {name!r}; choose from "
                                 f"{self._callback_tensor_inputs}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        image: PipelineImageInput | None = None,
        strength: float | None = None,
        num_inference_steps: int = 20,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 2.5,
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (the parent's default)
        *,
        subject_image: PipelineImageInput | None = None,
        subject_mask: PipelineImageInput | None = None,
        target_box: Sequence[float] | None = None,
        target_mask: PipelineImageInput | None = None,
        subject_words: str | Sequence[str] | None = None,
        subject_token_indices: Sequence[int] | None = None,
        domain: str = "same",
        tau_a: float = 0.3,
        tau_b: float = 0.8,
        tau_c: float = 0.2,
        faithful: bool = False,
        rca: bool | None = None,
        solver_order: int = 2,
        inversion_token_id: int | str | None = AUTO,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
    ) -> PrimeComposerPipelineOutput | tuple:
        r"""Compose ``subject_image`` (cut out by ``subject_mask``) into the background ``image``.

        Args:
            prompt: describes the composite; ``subject_words`` must occur in it.
            image: the background (PIL image or (H, W, 3) array).
            num_inference_steps: sampling steps; inversion uses the same grid.
            guidance_scale: classifier-free guidance of the generator (release defaults: 2.5; 2 for photos).
            generator, seed: randomness of the box noise (and of the VAE posterior with ``faithful``); pass one.
            subject_image, subject_mask: the subject and its segmentation (same size).
            target_box: ``(x0, y0, x1, y1)`` in background pixels; or ``target_mask``, whose bounding box is used.
                The subject keeps its aspect ratio and is centred on the box's centre.
            subject_words / subject_token_indices: the prompt's subject words (or their token positions, start
                token = 0) for region-constrained cross-attention.
            domain: ``"same"`` (photo into photo) or ``"cross"`` (photo into painting, sketch, cartoon).
            tau_a, tau_b, tau_c: step fractions of injection, background blending and subject re-paste,
                ``0 <= tau_c <= tau_a <= tau_b <= 1``.
            faithful: reproduce the released code instead of the paper where they differ (docs/composer.md).
            rca: region-constrained cross-attention; ``None``: on by default, off with ``faithful`` (dead code in
                the release).
            solver_order: 2 (DPM-Solver++(2M), released) or 1 (DDIM).
            inversion_token_id: token of TF-ICON's exceptional inversion prompt, ``None`` for the empty prompt,
                ``"auto"`` for 7788 (CLIP's) where the vocabulary has it, else the empty prompt.
            height, width: working size (multiples of :attr:`size_multiple`); default: the background's size
                rounded down, or with ``faithful`` the model's square default size.

        The parent's ``strength``, ``timesteps``, ``sigmas``, ``eta``, ``ip_adapter_*`` and
        ``num_images_per_prompt`` are accepted only at neutral values (composition always starts from the fully
        inverted background, on its own grid, one image per call). ``callback_on_step_end`` also offers
        ``background_latents`` (the background trajectory at the step's time).

        Returns:
            :class:`PrimeComposerPipelineOutput`, or ``(images, nsfw_content_detected, masks)`` when
            ``return_dict=False``.
        """
        check_call(self, locals())  # every argument, before any model runs
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        config = ComposerConfig(domain, tau_a, tau_b, tau_c, faithful, rca, solver_order, inversion_token_id)
        self._check_call(prompt, prompt_embeds, num_inference_steps, solver_order, generator, seed,
                         callback_on_step_end_tensor_inputs,
                         {"strength": (strength, None), "timesteps": (timesteps, None), "sigmas": (sigmas, None),
                          "eta": (eta, 0.0), "ip_adapter_image": (ip_adapter_image, None),
                          "ip_adapter_image_embeds": (ip_adapter_image_embeds, None),
                          "num_images_per_prompt": (num_images_per_prompt, 1)})
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self._guidance_scale, self._clip_skip, self._interrupt = guidance_scale, clip_skip, False
        self._cross_attention_kwargs = cross_attention_kwargs
        device = self._execution_device

        # 1. Images, placement and subject tokens (all validation before any model runs)
        if image is None or subject_image is None or subject_mask is None:
            raise ValueError("pass image (background), subject_image and subject_mask")
        background = to_rgb_image(image, "image")
        subject = to_rgb_image(subject_image, "subject_image")
        segmentation = to_bool_mask(subject_mask, "subject_mask")
        check_same_size(subject, segmentation, "subject_image", "subject_mask")
        user_box = target_box_from(target_box, target_mask, background)
        canvas_hw = self._canvas_size(background, height, width, faithful)
        inputs = prepare(background, subject, segmentation, user_box, canvas_hw, domain, faithful)
        latent_hw = (canvas_hw[0] // self.vae_scale_factor, canvas_hw[1] // self.vae_scale_factor)
        grids = unet_grids(latent_hw, len(self.unet.config.block_out_channels))
        layouts = {grid: inputs.placement.at(grid) for grid in grids}  # raises if the box leaves a grid
        tokens = self._subject_tokens(prompt, subject_words, subject_token_indices, config.use_rca)

        # 2. Conditions
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        cond, uncond = self.encode_prompt(prompt, device, 1, self.do_classifier_free_guidance, negative_prompt,
                                          prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip)
        embeds = {"cond": cond, "uncond": uncond,
                  "inversion": self.encode_inversion_prompt(inversion_token_id, device).to(cond.dtype)}

        # 3. Latents of the background (or pixel composite) and of the subject canvas
        background_latents = self.encode_image_latents(inputs.background, faithful, generator, device)
        reference_latents = self.encode_image_latents(inputs.reference, faithful, generator, device)

        maps = CorrelationMaps()
        layout_at = inputs.placement.at
        injection = SubjectInjection(layout_at, maps, conditional_rows)  # the rows each generator pass declares "cond"
        controls = [CorrelationRecorder(layout_at, maps, queries_from_composite=not faithful), injection]
        if config.use_rca and tokens:
            controls.append(RegionConstrainedCrossAttention(
                [TokenRegion(tuple(tokens), lambda grid: layout_at(grid).target_mask())], conditional_rows, GENERATOR))
        controller = AttentionController(controls)
        schedule = DiscreteVPSchedule(self.scheduler.alphas_cumprod)
        model = _UNetComposer(self, controller, injection, schedule, embeds)
        latent_layout = layouts[latent_hw]
        self._num_timesteps = num_inference_steps

        with controller.installed(self.unet), self.progress_bar(total=num_inference_steps) as progress:
            both = invert(schedule, model.predict_inversion, torch.cat([background_latents, reference_latents]),
                          num_inference_steps, solver_order)  # one batch of two: both images share grid and prompt
            trajectories = Trajectories([z[:1] for z in both], [z[1:] for z in both])
            noise = randn_tensor(background_latents.shape, generator=generator, device=device,
                                 dtype=background_latents.dtype)
            start = initial_latents(trajectories, latent_layout, domain, noise)

            def on_step(index: int, t: float, latents: torch.Tensor, background_step: torch.Tensor) -> torch.Tensor:
                progress.update()
                if callback_on_step_end is None:
                    return latents
                available = {"latents": latents, "prompt_embeds": cond, "negative_prompt_embeds": uncond,
                             "background_latents": background_step}
                kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                timestep = torch.tensor(schedule.model_time(t))
                return callback_on_step_end(self, index, timestep, kwargs).pop("latents", latents)

            latents = compose(model, schedule, config, phases_for(config, num_inference_steps), latent_layout,
                              trajectories, start, on_step, lambda: self.interrupt)

        images, nsfw = self._decode(latents, output_type, device, cond.dtype)
        self.maybe_free_model_hooks()
        masks = _pixel_masks(inputs.placement, inputs.box)
        if not return_dict:
            return images, nsfw, masks
        return PrimeComposerPipelineOutput(images=images, nsfw_content_detected=nsfw, masks=masks,
                                           layer_masks={grid: _layer_map(layout) for grid, layout in layouts.items()})

    def _decode(self, latents: torch.Tensor, output_type: str, device: torch.device, dtype: torch.dtype):
        if output_type == "latent":
            return latents, None
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        image, nsfw = self.run_safety_checker(image, device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), nsfw


def _layer_map(layout) -> torch.Tensor:
    """(gh, gw) uint8: 0 outside the box, 1 in the box, 2 on the subject cells."""
    return layout.box_mask().to(torch.uint8) + layout.target_mask().to(torch.uint8)


def _pixel_masks(placement: Placement, user_box) -> dict[str, PIL.Image.Image]:
    layout = placement.at(placement.canvas_hw)
    target = torch.zeros(placement.canvas_hw, dtype=torch.bool)
    target[int(user_box.y0):int(np.ceil(user_box.y1)), int(user_box.x0):int(np.ceil(user_box.x1))] = True
    as_image = lambda mask: PIL.Image.fromarray(mask.numpy().astype(np.uint8) * 255)  # noqa: E731
    return {"subject": as_image(layout.target_mask()), "box": as_image(layout.box_mask()),
            "reference": as_image(placement.canvas_mask), "target": as_image(target)}
