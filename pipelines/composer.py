"""``PrimeComposerPipeline``: training-free image composition with attention steering (Wang et al., ACM MM 2024).

``PrimeComposerPipeline`` subclasses diffusers' ``StableDiffusionImg2ImgPipeline`` (SD 1.x/2.x) and
``PrimeComposerXLPipeline`` subclasses ``StableDiffusionXLPipeline``; ``from_pretrained`` on either returns the
variant of the folder's family. A call inverts the background and the subject canvas with DPM-Solver++, then samples
the target box with the Correlation Diffuser's self-attention logits injected into the generator, region-constrained
cross-attention on the subject words, and the background trajectory restored outside the box after each step.
Processors are swapped only inside the call (``AttentionController.installed``).

Both variants share one sampler (:class:`_UNetComposer`, :func:`attnctl.composer.compose`): what a family adds to
the UNet's input (SDXL's pooled text embedding and time ids) travels with each prompt's states as a
:class:`UNetCondition`. Each variant's ``__call__`` takes its parent's arguments plus the composer's own (those of
:meth:`ComposerMethod.composition`); parent arguments without a meaning for composition are accepted only at their
defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLPipeline
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
from attnctl.core.rows import RowLayout

from .base import FamilyPipelineMixin, parent_pipeline

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


@dataclass(frozen=True)
class UNetCondition:
    """What the UNet reads for one prompt besides the latents.

    ``states``: (rows, tokens, dim) ``encoder_hidden_states``; ``added``: the family's ``added_cond_kwargs``, each
    (rows, dim): SDXL's ``text_embeds`` (the pooled prompt embedding) and ``time_ids``; empty for SD 1.x/2.x.
    ``rows`` is 1 (broadcast to any batch) or the batch size of the pass.
    """

    states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def for_batch(self, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``encoder_hidden_states`` and ``added_cond_kwargs`` (``None`` when empty) for a batch of ``size``."""
        added = {name: value.expand(size, -1) for name, value in self.added.items()}
        return self.states.expand(size, -1, -1), added or None

    def stacked_on(self, first: UNetCondition) -> UNetCondition:
        """``[first, self]`` along the batch: ``cond.stacked_on(uncond)`` is the ``[uncond, cond]`` guidance batch."""
        return UNetCondition(torch.cat([first.states, self.states]),
                             {name: torch.cat([first.added[name], value]) for name, value in self.added.items()})

    def completed_from(self, other: UNetCondition) -> UNetCondition:
        """This condition with ``other``'s added entries where it has none (the inversion prompt takes the
        composite's SDXL time ids)."""
        return replace(self, added={**other.added, **self.added})


class _UNetComposer:
    """The pipeline's UNet seen by the sampling loop: correlation pass, guided prediction, inversion prediction.

    ``conditions`` holds a :class:`UNetCondition` for ``"cond"``, ``"inversion"`` and, when guided, ``"uncond"``;
    every pass declares its branch and its batch rows to the controller.
    """

    def __init__(self, pipe: ComposerMethod, controller: AttentionController, injection: SubjectInjection,
                 schedule: DiscreteVPSchedule, conditions: dict[str, UNetCondition]) -> None:
        self.pipe, self.controller, self.injection, self.schedule = pipe, controller, injection, schedule
        self.guided = pipe.do_classifier_free_guidance
        self.generator_rows = stacked("uncond", "cond") if self.guided else stacked("cond")
        self.conditions = {**conditions, GENERATOR: (conditions["cond"].stacked_on(conditions["uncond"])
                                                     if self.guided else conditions["cond"])}

    def _output(self, latents: torch.Tensor, t: float, condition: UNetCondition, branch: str,
                rows: RowLayout) -> torch.Tensor:
        """One UNet pass, declared to the controller as ``branch`` with the batch ``rows``."""
        timestep = torch.tensor(self.schedule.model_time(t), device=latents.device, dtype=torch.float32)
        states, added = condition.for_batch(latents.shape[0])
        with self.controller.declared(branch, rows):
            return self.pipe.unet(latents, timestep, encoder_hidden_states=states, added_cond_kwargs=added,
                                  cross_attention_kwargs=self.pipe.cross_attention_kwargs, return_dict=False)[0]

    def _data(self, output: torch.Tensor, latents: torch.Tensor, t: float) -> torch.Tensor:
        return data_from_output(output, latents, self.schedule.alpha(t), self.schedule.sigma(t),
                                self.pipe.scheduler.config.prediction_type)

    def correlate(self, reference: torch.Tensor, composite: torch.Tensor | None, t: float) -> None:
        batch = reference if composite is None else torch.cat([composite, reference])
        rows = stacked("reference") if composite is None else stacked("composite", "reference")
        self._output(batch, t, self.conditions["cond"], CORRELATION, rows)  # only the recorded logits matter

    def predict(self, latents: torch.Tensor, t: float, inject: bool) -> torch.Tensor:
        self.injection.active = inject
        batch = torch.cat([latents] * 2) if self.guided else latents
        output = self._output(batch, t, self.conditions[GENERATOR], GENERATOR, self.generator_rows)
        self.injection.active = False
        if self.guided:
            uncond, cond = output.chunk(2)
            output = uncond + self.pipe.guidance_scale * (cond - uncond)
        return self._data(output, latents, t)

    def predict_inversion(self, latents: torch.Tensor, t: float) -> torch.Tensor:
        rows = stacked("background", "reference")
        inverted = self._output(latents, t, self.conditions[INVERSION], INVERSION, rows)
        return self._data(inverted, latents, t)


def _composer_signature(parent_call: Callable, composition: Callable) -> inspect.Signature:
    """The parent's ``__call__`` parameters (its ``**kwargs`` left out), with the composer's default where both
    name one (``image``, ``guidance_scale``, ``num_inference_steps``, ``height``, ``width``), then the composer's
    other keyword-only parameters."""
    own = {p.name: p for p in inspect.signature(composition).parameters.values() if p.kind is p.KEYWORD_ONLY}
    parent = [p for p in inspect.signature(parent_call).parameters.values() if p.kind is not p.VAR_KEYWORD]
    merged = [p.replace(default=own[p.name].default) if p.name in own else p for p in parent]
    taken = {p.name for p in parent}
    return inspect.Signature(merged + [p for name, p in own.items() if name not in taken])


def _variant_call(cls: type) -> Callable:
    """``__call__`` of a variant: :meth:`ComposerMethod._composer_call` under the variant's own signature (its
    parent's arguments plus those of :meth:`ComposerMethod.composition`) and docstring."""
    parent = parent_pipeline(cls)
    call = lambda self, *args, **kwargs: self._composer_call(args, kwargs)  # noqa: E731 (one function per variant)
    call.__signature__ = _composer_signature(parent.__call__, cls.composition)
    call.__name__, call.__qualname__ = "__call__", f"{cls.__name__}.__call__"
    call.__doc__ = (f"{cls.__name__}: compose ``subject_image`` into the background ``image``. Arguments of "
                    f"``{parent.__name__}.__call__`` the composition does not read are accepted only at their "
                    f"defaults.\n\n{inspect.getdoc(cls.composition) or ''}")
    return torch.no_grad()(call)


#: Parent ``__call__`` arguments the composition reads, on every family; the others must stay at their defaults.
COMMON_ARGUMENTS = frozenset({
    "prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "generator", "output_type",
    "return_dict", "cross_attention_kwargs", "clip_skip", "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
})


def _is_default(value: Any, default: Any) -> bool:
    """Whether ``value`` is the parameter's ``default`` (arrays and tensors never are, unless the same object)."""
    if value is default:
        return True
    return default is not None and isinstance(value, (int, float, str, tuple, list)) and value == default


class ComposerMethod(FamilyPipelineMixin):
    """PrimeComposer, whatever the family; a variant inherits the family's diffusers pipeline and sets ``family``.

    ``from_pretrained`` returns the variant of the checkpoint's family and refuses the others before loading
    anything (joint-attention families: docs/composer.md says why). A variant supplies the prompt conditions
    (:meth:`encode_conditions`), the exceptional-prompt encoding (:meth:`encode_token_ids`) and the decoding
    (:meth:`postprocess`); the composition itself (:meth:`composition`) is shared.
    """

    #: the parent's arguments this family's variant reads besides :data:`COMMON_ARGUMENTS`
    family_arguments: ClassVar[frozenset[str]] = frozenset()
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "background_latents"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:  # a variant: its own __call__, signature and docstring
            cls.__call__ = _variant_call(cls)

    # -- family hooks --------------------------------------------------------------------------------------
    def encode_conditions(self, call: Mapping[str, Any], canvas_hw: tuple[int, int],
                          device: torch.device) -> dict[str, UNetCondition]:
        """``"cond"`` and, under classifier-free guidance, ``"uncond"``: the prompt's UNet conditions."""
        raise NotImplementedError

    def encode_token_ids(self, ids: torch.Tensor) -> UNetCondition:
        """The condition of token ``ids`` (1, length) through the family's text encoders, as its pipeline does."""
        raise NotImplementedError

    def empty_prompt(self, device: torch.device) -> UNetCondition:
        """The condition of the empty prompt."""
        raise NotImplementedError

    def postprocess(self, image: torch.Tensor, output_type: str, device: torch.device, dtype: torch.dtype):
        """(images, nsfw flags or ``None``) from the decoded pixels, as the family's pipeline finishes."""
        raise NotImplementedError

    @contextmanager
    def vae_precision(self) -> Iterator[None]:
        """The dtype the VAE runs in; SD runs it as loaded."""
        yield

    # -- shared --------------------------------------------------------------------------------------------
    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [encoder for encoder in (getattr(self, "text_encoder", None), getattr(self, "text_encoder_2", None))
                if encoder is not None]

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: the VAE factor times the UNet's total downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def resolve_inversion_token(self, token_id: int | str | None) -> int | None:
        """``"auto"``: TF-ICON's token (7788) where the vocabulary has it and every text encoder has position
        embeddings to switch off, else ``None`` (the empty prompt); anything else is returned as given."""
        if token_id != AUTO:
            return token_id
        if EXCEPTIONAL_TOKEN_ID < len(self.tokenizer) and None not in self._position_embeddings():
            return EXCEPTIONAL_TOKEN_ID
        logger.info("inversion_token_id='auto': token %d is not in this model's vocabulary; inverting with the "
                    "empty prompt", EXCEPTIONAL_TOKEN_ID)
        return None

    def _position_embeddings(self) -> list[torch.nn.Module | None]:
        """Each text encoder's ``embeddings.position_embedding`` (``None`` where it has none)."""
        return [next((m for name, m in encoder.named_modules() if name.endswith("embeddings.position_embedding")),
                     None) for encoder in self.text_encoders]

    def encode_inversion_prompt(self, token_id: int | str | None, device: torch.device) -> UNetCondition:
        """The inversion condition: TF-ICON's "exceptional prompt" (``token_id`` repeated, token embeddings only,
        no position embeddings, through every text encoder of the family), or the empty prompt when ``token_id``
        is ``None`` (``"auto"``: see :meth:`resolve_inversion_token`)."""
        token_id = self.resolve_inversion_token(token_id)
        if token_id is None:
            return self.empty_prompt(device)
        vocabulary = len(self.tokenizer)
        if not 0 <= token_id < vocabulary:
            raise ValueError(f"inversion_token_id={token_id} is not in the tokenizer's vocabulary of {vocabulary} "
                             f"tokens; pass an id below {vocabulary}, or None to invert with the empty prompt")
        positions = self._position_embeddings()
        if None in positions:
            raise ValueError("a text encoder has no embeddings.position_embedding module to switch off for the "
                             "exceptional prompt; pass inversion_token_id=None")
        ids = torch.full((1, self.tokenizer.model_max_length), token_id, dtype=torch.long, device=device)
        handles = [p.register_forward_hook(lambda module, args, output: torch.zeros_like(output)) for p in positions]
        try:
            return self.encode_token_ids(ids)
        finally:
            for handle in handles:
                handle.remove()

    def encode_image_latents(self, image: PIL.Image.Image, sample: bool, generator: torch.Generator | None,
                             device: torch.device) -> torch.Tensor:
        """VAE latent of ``image`` (scaled): a posterior sample (the release) or its mode."""
        pixels = self.image_processor.preprocess(image).to(device=device)
        with self.vae_precision():
            posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator) if sample else posterior.mode()
        return (latents * self.vae.config.scaling_factor).to(self.unet.dtype)

    def _subject_tokens(self, call, subject_words, subject_token_indices, required: bool) -> list[int]:
        if subject_token_indices is not None:
            return check_token_indices(subject_token_indices, self.tokenizer.model_max_length,
                                       "subject_token_indices")
        if subject_words is None:
            if required:
                raise ValueError("region-constrained cross-attention needs the subject: pass subject_words (words "
                                 "of the prompt) or subject_token_indices, or rca=False")
            return []
        prompt = call["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("subject_words needs the prompt text; with prompt_embeds pass subject_token_indices")
        if call.get("prompt_2") not in (None, prompt):
            raise ValueError("prompt_2 differs from prompt: subject_words are located in prompt, and the second text "
                             "encoder's tokens would not line up with them; leave prompt_2=None")
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

    def _check_unused(self, call: Mapping[str, Any], own: set[str]) -> None:
        """Parent arguments the composition does not read must keep their defaults (never silently ignored)."""
        reads = COMMON_ARGUMENTS | self.family_arguments | own
        defaults = inspect.signature(parent_pipeline(type(self)).__call__).parameters
        for name, value in call.items():
            neutral = defaults[name].default
            if name not in reads and not _is_default(value, neutral):
                raise ValueError(f"{name}={value!r} is not supported by {type(self).__name__}; leave it at "
                                 f"{neutral!r} (a composition starts from the fully inverted background, on its "
                                 "own grid, one image per call)")

    def _check_call(self, call, steps, order, generator, seed, callback_inputs):
        if call["prompt"] is None and call["prompt_embeds"] is None:
            raise ValueError("pass prompt or prompt_embeds")
        if call["prompt"] is not None and not isinstance(call["prompt"], str):
            raise ValueError(f"prompt must be one string (one composition per call); got "
                             f"{type(call['prompt']).__name__}")
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

    def _composer_call(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        bound = type(self).__call__.__signature__.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {name: value for name, value in bound.arguments.items() if name != "self"}
        own = {name for name, p in inspect.signature(type(self).composition).parameters.items()
               if p.kind is p.KEYWORD_ONLY}
        call = {name: value for name, value in arguments.items() if name not in own}
        self._check_unused(call, own)
        check_call(self, arguments)  # every argument, before any model runs
        return self.composition(call, **{name: arguments[name] for name in own})

    def composition(
        self,
        call: Mapping[str, Any],
        *,
        image: PipelineImageInput | None = None,
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
        num_inference_steps: int = 20,
        guidance_scale: float = 2.5,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
    ) -> PrimeComposerPipelineOutput | tuple:
        r"""Compose ``subject_image`` (cut out by ``subject_mask``) into the background ``image``.

        ``call`` holds the parent pipeline's other arguments (``prompt``, ``negative_prompt``, ``prompt_embeds``,
        ``generator``, ``output_type``, ``callback_on_step_end``, ... and SDXL's ``prompt_2``,
        ``pooled_prompt_embeds``, ``original_size``, ``target_size``, ``crops_coords_top_left`` and their negatives).

        Args:
            image: the background (PIL image or (H, W, 3) array).
            subject_image, subject_mask: the subject and its segmentation (same size).
            target_box: ``(x0, y0, x1, y1)`` in background pixels; or ``target_mask``, whose bounding box is used.
                The subject keeps its aspect ratio and is centred on the box's centre.
            subject_words / subject_token_indices: the prompt's subject words (or their token positions, start
                token = 0) for region-constrained cross-attention; ``prompt`` must contain the words.
            domain: ``"same"`` (photo into photo) or ``"cross"`` (photo into painting, sketch, cartoon).
            tau_a, tau_b, tau_c: step fractions of injection, background blending and subject re-paste,
                ``0 <= tau_c <= tau_a <= tau_b <= 1``.
            faithful: reproduce the released code instead of the paper where they differ (docs/composer.md).
            rca: region-constrained cross-attention; ``None``: on by default, off with ``faithful`` (dead code in
                the release).
            solver_order: 2 (DPM-Solver++(2M), released) or 1 (DDIM).
            inversion_token_id: token of TF-ICON's exceptional inversion prompt, ``None`` for the empty prompt,
                ``"auto"`` for 7788 (CLIP's) where the vocabulary has it, else the empty prompt.
            num_inference_steps: sampling steps; inversion uses the same grid.
            guidance_scale: classifier-free guidance of the generator (release defaults: 2.5; 2 for photos).
            height, width: working size (multiples of :attr:`size_multiple`); default: the background's size
                rounded down, or with ``faithful`` the model's square default size.
            seed: randomness of the box noise (and of the VAE posterior with ``faithful``), instead of
                ``generator``; pass one.

        The parent's arguments the composition does not read (``strength``, ``timesteps``, ``sigmas``, ``eta``,
        ``ip_adapter_*``, ``num_images_per_prompt``, SDXL's ``denoising_end``, ``guidance_rescale``, ``latents``)
        are accepted only at their defaults. ``callback_on_step_end`` also offers ``background_latents`` (the
        background trajectory at the step's time).

        Returns:
            :class:`PrimeComposerPipelineOutput`, or ``(images, nsfw_content_detected, masks)`` when
            ``return_dict=False``.
        """
        callback, callback_inputs = call["callback_on_step_end"], call["callback_on_step_end_tensor_inputs"]
        if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
            callback_inputs = callback.tensor_inputs
        config = ComposerConfig(domain, tau_a, tau_b, tau_c, faithful, rca, solver_order, inversion_token_id)
        generator = call["generator"]
        self._check_call(call, num_inference_steps, solver_order, generator, seed, callback_inputs)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self._guidance_scale, self._clip_skip, self._interrupt = guidance_scale, call["clip_skip"], False
        self._cross_attention_kwargs = call["cross_attention_kwargs"]
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
        tokens = self._subject_tokens(call, subject_words, subject_token_indices, config.use_rca)

        # 2. Conditions: the prompt's (with the family's added conditioning) and the inversion prompt's
        conditions = self.encode_conditions(call, canvas_hw, device)
        cond = conditions["cond"]
        inversion = self.encode_inversion_prompt(inversion_token_id, device)
        conditions[INVERSION] = replace(inversion.completed_from(cond), states=inversion.states.to(cond.states.dtype))

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
        model = _UNetComposer(self, controller, injection, schedule, conditions)
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
                if callback is None:
                    return latents
                uncond = conditions.get("uncond")
                available = {"latents": latents, "prompt_embeds": cond.states, "background_latents": background_step,
                             "negative_prompt_embeds": None if uncond is None else uncond.states}
                kwargs = {name: available[name] for name in callback_inputs}
                timestep = torch.tensor(schedule.model_time(t))
                return callback(self, index, timestep, kwargs).pop("latents", latents)

            latents = compose(model, schedule, config, phases_for(config, num_inference_steps), latent_layout,
                              trajectories, start, on_step, lambda: self.interrupt)

        images, nsfw = self._decode(latents, call["output_type"], device, cond.states.dtype)
        self.maybe_free_model_hooks()
        masks = _pixel_masks(inputs.placement, inputs.box)
        if not call["return_dict"]:
            return images, nsfw, masks
        return PrimeComposerPipelineOutput(images=images, nsfw_content_detected=nsfw, masks=masks,
                                           layer_masks={grid: _layer_map(layout) for grid, layout in layouts.items()})

    def _decode(self, latents: torch.Tensor, output_type: str, device: torch.device, dtype: torch.dtype):
        if output_type == "latent":
            return latents, None
        with self.vae_precision():
            scaled = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
            image = self.vae.decode(scaled, return_dict=False)[0]
        return self.postprocess(image, output_type, device, dtype)


class PrimeComposerPipeline(ComposerMethod, StableDiffusionImg2ImgPipeline):
    """Place a subject (image + mask) into a background box; loads any SD 1.x/2.x checkpoint with
    ``from_pretrained`` (and returns :class:`PrimeComposerXLPipeline` for an SDXL folder)."""

    family = "sd"

    def encode_conditions(self, call, canvas_hw, device):
        lora_scale = (call["cross_attention_kwargs"] or {}).get("scale")
        cond, uncond = self.encode_prompt(call["prompt"], device, 1, self.do_classifier_free_guidance,
                                          call["negative_prompt"], call["prompt_embeds"],
                                          call["negative_prompt_embeds"], lora_scale, call["clip_skip"])
        conditions = {"cond": UNetCondition(cond)}
        if uncond is not None:
            conditions["uncond"] = UNetCondition(uncond)
        return conditions

    def encode_token_ids(self, ids):
        return UNetCondition(self.text_encoder(ids)[0].to(self.unet.dtype))

    def empty_prompt(self, device):
        return UNetCondition(self.encode_prompt("", device, 1, False)[0])

    def postprocess(self, image, output_type, device, dtype):
        image, nsfw = self.run_safety_checker(image, device, dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), nsfw


class PrimeComposerXLPipeline(ComposerMethod, StableDiffusionXLPipeline):
    """PrimeComposer on Stable Diffusion XL: prompts through both text encoders, the pooled embedding and the
    time ids (``original_size``, ``crops_coords_top_left``, ``target_size``; default: the canvas) in every UNet
    pass, the VAE in float32 where its config says ``force_upcast``."""

    family = "sdxl"
    family_arguments = frozenset({
        "prompt_2", "negative_prompt_2", "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "original_size",
        "crops_coords_top_left", "target_size", "negative_original_size", "negative_crops_coords_top_left",
        "negative_target_size",
    })

    def _time_ids(self, original_size, crops, target_size, pooled: torch.Tensor) -> torch.Tensor:
        """(1, 6) SDXL micro-conditioning, checked against the UNet's added embedding by diffusers."""
        projection = (int(pooled.shape[-1]) if self.text_encoder_2 is None
                      else self.text_encoder_2.config.projection_dim)
        return self._get_add_time_ids(tuple(original_size), tuple(crops), tuple(target_size), dtype=pooled.dtype,
                                      text_encoder_projection_dim=projection).to(pooled.device)

    def encode_conditions(self, call, canvas_hw, device):
        for states, pooled in (("prompt_embeds", "pooled_prompt_embeds"),
                               ("negative_prompt_embeds", "negative_pooled_prompt_embeds")):
            if call[states] is not None and call[pooled] is None:
                raise ValueError(f"{states} was given without {pooled}: SDXL's UNet reads both; pass {pooled} "
                                 "(the second text encoder's pooled output) too")
        lora_scale = (call["cross_attention_kwargs"] or {}).get("scale")
        cond, uncond, pooled, negative_pooled = self.encode_prompt(
            call["prompt"], call["prompt_2"], device, 1, self.do_classifier_free_guidance, call["negative_prompt"],
            call["negative_prompt_2"], call["prompt_embeds"], call["negative_prompt_embeds"],
            call["pooled_prompt_embeds"], call["negative_pooled_prompt_embeds"], lora_scale, call["clip_skip"])
        time_ids = self._time_ids(call["original_size"] or canvas_hw, call["crops_coords_top_left"],
                                  call["target_size"] or canvas_hw, pooled)
        conditions = {"cond": UNetCondition(cond, {"text_embeds": pooled, "time_ids": time_ids})}
        if uncond is not None:
            negative_sizes = call["negative_original_size"], call["negative_target_size"]
            negative_ids = time_ids if None in negative_sizes else self._time_ids(
                negative_sizes[0], call["negative_crops_coords_top_left"], negative_sizes[1], pooled)
            conditions["uncond"] = UNetCondition(uncond, {"text_embeds": negative_pooled, "time_ids": negative_ids})
        return conditions

    def encode_token_ids(self, ids):
        """Both encoders' penultimate hidden states side by side and text_encoder_2's pooled projection, as
        ``StableDiffusionXLPipeline.encode_prompt`` builds them (``clip_skip=None``)."""
        states, pooled = [], None
        for encoder in self.text_encoders:
            output = encoder(ids, output_hidden_states=True)
            if output[0].ndim == 2:  # CLIPTextModelWithProjection: the pooled projection
                pooled = output[0]
            states.append(output.hidden_states[-2])
        return UNetCondition(torch.cat(states, dim=-1).to(self.unet.dtype), {"text_embeds": pooled})

    def empty_prompt(self, device):
        states, _, pooled, _ = self.encode_prompt("", device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return UNetCondition(states, {"text_embeds": pooled})

    @contextmanager
    def vae_precision(self) -> Iterator[None]:
        """SDXL's VAE overflows in float16: in float32 for the ``with`` body where its config says
        ``force_upcast``, as diffusers' SDXL pipelines do; back to float16 afterwards."""
        if not (self.vae.dtype == torch.float16 and self.vae.config.force_upcast):
            yield
            return
        self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            self.vae.to(dtype=torch.float16)

    def postprocess(self, image, output_type, device, dtype):
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type), None


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
