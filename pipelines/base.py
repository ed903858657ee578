"""One mechanism for every attnctl method pipeline: controls installed around the family pipeline's own call.

A method is a mixin subclassing :class:`ControlledPipelineMixin`; it declares its own keyword arguments as the
keyword-only parameters of :meth:`ControlledPipelineMixin.prepare` and returns a :class:`MethodRun` (the
controls and how to build the output). Each supported model family gets one variant class, the method mixin
first and the family's diffusers pipeline second::

    class StructuredDiffusionXLPipeline(StructuredMethod, StableDiffusionXLPipeline):
        family = "sdxl"

The mixin then gives the variant

* a ``__call__`` whose signature (``inspect.signature``, docs, the batch CLI's checks) is the parent's plus the
  method's arguments, that runs the parent's ``__call__`` unchanged, inside ``AttentionController.installed``
  only when the method has controls to install (so "control off" *is* the stock pipeline, bit for bit);
* ``from_pretrained`` that picks the variant of the folder's family from ``model_index.json`` (as diffusers'
  AutoPipeline does) on any variant of the method, and refuses unsupported families before loading anything.

:class:`FamilyText` says, per family, where prompt tokens sit in the text keys and how to encode extra texts
(phrases) into the space those keys are projected from.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline

from attnctl.checks import check_call, whole_numbers
from attnctl.composer.tokens import check_token_indices, words_token_indices
from attnctl.core import AttentionControl, AttentionController, AttentionStore, TokenHeatmaps, guidance_rows
from attnctl.core.rows import RowLayout
from attnctl.models.families import Family, detect_family, get_family
from attnctl.structured import Phrase, normalize_prompt
from attnctl.structured.phrases import token_span


@dataclass
class MethodRun:
    """What a method installs for one call and how it turns the parent's output into its own.

    Args:
        controls: installed on the denoiser for the call; empty means the parent pipeline runs untouched.
        finish: ``(parent_output) -> method output`` for ``return_dict=True``.
        rows: the batch layout of every pass; ``None``: ``guidance_rows(prompts x images per prompt)``.
        around: a context entered inside the installed controller for the call (extra phrase rows, SD3/Flux).
        arguments: parent call arguments the method replaces (regional prompts' ``prompt=base_prompt``).
    """

    controls: list[AttentionControl] = field(default_factory=list)
    finish: Callable[[Any], Any] = lambda output: output
    rows: RowLayout | None = None
    around: Callable[[], AbstractContextManager] | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


class FamilyText:
    """Prompt tokens of one family as its attention layers see them.

    ``offset`` is the key position of the prompt's first token (1 after CLIP's start token, 0 for T5).
    """

    tokenizer_attribute = "tokenizer"
    offset = 1

    def tokenizer(self, pipe: DiffusionPipeline) -> Any:
        return getattr(pipe, self.tokenizer_attribute)

    def sequence_length(self, pipe: DiffusionPipeline, call: Mapping[str, Any]) -> int:
        """How many text keys the attention layers see (special tokens and padding included)."""
        return self.tokenizer(pipe).model_max_length

    def max_tokens(self, pipe: DiffusionPipeline, call: Mapping[str, Any]) -> int:
        """How many prompt tokens (special tokens excluded) reach attention."""
        return self.sequence_length(pipe, call) - 2

    def prompt_ids(self, pipe: DiffusionPipeline, prompt: str, call: Mapping[str, Any]) -> list[int]:
        """The prompt's token ids as they reach attention, special tokens excluded."""
        ids = self.tokenizer(pipe)(prompt, add_special_tokens=False).input_ids
        return ids[: self.max_tokens(pipe, call)]

    def encode(self, pipe: DiffusionPipeline, texts: list[str], call: Mapping[str, Any]) -> torch.Tensor:
        """(texts, tokens, dim): each text encoded alone, as the attention layers receive a prompt's states."""
        raise ValueError(f"{type(pipe).__name__}: encoding phrases apart is not implemented for this family "
                         "(docs/structured.md defines structured guidance on joint attention)")

    def word_positions(self, pipe: DiffusionPipeline, prompt: str, words: str | Sequence[str], name: str,
                       call: Mapping[str, Any]) -> list[int]:
        """Text-key positions of every occurrence of ``words`` in ``prompt`` (``ValueError`` if one is missing)."""
        return words_token_indices(self.tokenizer(pipe), prompt, words, name, self.offset,
                                   self.sequence_length(pipe, call))

    def check_positions(self, positions: Sequence[int], name: str, pipe: DiffusionPipeline,
                        call: Mapping[str, Any]) -> list[int]:
        """Explicit text-key positions, validated against the key sequence (a start token cannot be named)."""
        return check_token_indices(positions, self.key_length(pipe, call), name, self.offset)

    def key_length(self, pipe: DiffusionPipeline, call: Mapping[str, Any]) -> int:
        """How many text keys the image queries read."""
        return self.sequence_length(pipe, call)


class SDText(FamilyText):
    def encode(self, pipe, texts, call):
        lora_scale = (call.get("cross_attention_kwargs") or {}).get("scale")
        return pipe.encode_prompt(texts, pipe._execution_device, 1, False, lora_scale=lora_scale,
                                  clip_skip=call.get("clip_skip"))[0]


class SDXLText(FamilyText):
    """SDXL: both CLIP encoders, concatenated per token (the pooled vector is not an attention input)."""

    def encode(self, pipe, texts, call):
        if call.get("prompt_2") is not None and call.get("prompt_2") != call.get("prompt"):
            raise ValueError("prompt_2 differs from prompt: phrases are located in prompt, and the second text "
                             "encoder's tokens would not line up with them; leave prompt_2=None")
        lora_scale = (call.get("cross_attention_kwargs") or {}).get("scale")
        return pipe.encode_prompt(prompt=texts, device=pipe._execution_device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=False, lora_scale=lora_scale,
                                  clip_skip=call.get("clip_skip"))[0]


class PixArtText(FamilyText):
    """PixArt-Sigma: T5 (no start token), projected by the transformer's ``caption_projection``."""

    offset = 0

    def sequence_length(self, pipe, call):
        return call["max_sequence_length"]

    def max_tokens(self, pipe, call):
        return call["max_sequence_length"] - 1  # no start token, one </s>

    def encode(self, pipe, texts, call):
        embeds = pipe.encode_prompt(texts, False, num_images_per_prompt=1, device=pipe._execution_device,
                                    clean_caption=call["clean_caption"],
                                    max_sequence_length=call["max_sequence_length"])[0]
        return pipe.transformer.caption_projection(embeds.to(pipe.transformer.dtype))


class FluxText(FamilyText):
    """Flux: only T5 (``tokenizer_2``) reaches attention, no start token; CLIP gives the pooled vector."""

    tokenizer_attribute = "tokenizer_2"
    offset = 0

    def encode(self, pipe, texts, call):
        """The phrases' ``encoder_hidden_states`` (T5, before the transformer's ``context_embedder``)."""
        lora_scale = (call.get("joint_attention_kwargs") or {}).get("scale")
        return pipe.encode_prompt(prompt=texts, prompt_2=None, device=pipe._execution_device, num_images_per_prompt=1,
                                  max_sequence_length=call["max_sequence_length"], lora_scale=lora_scale)[0]

    def joint_moves(self, pipe, prompt: str, phrase: Phrase, call) -> tuple[tuple[int, int, int], ...]:
        """(destination, source, length) text-key moves of ``phrase`` (see :class:`JointPhrase`)."""
        length = min(phrase.token_end, self.max_tokens(pipe, call)) - phrase.token_start
        return ((phrase.token_start, 0, length),) if length > 0 else ()

    def sequence_length(self, pipe, call):
        return call["max_sequence_length"]

    def max_tokens(self, pipe, call):
        return call["max_sequence_length"] - 1


class SD3Text(FamilyText):
    """SD3/3.5: 77 CLIP rows (start token first), then the T5 rows (``tokenizer_3``, no start token). A word
    sits twice in the text keys: in the CLIP rows and in the T5 rows."""

    def t5_positions(self, pipe, prompt, words, name, call) -> list[int]:
        clip_rows = pipe.tokenizer_max_length
        found = words_token_indices(pipe.tokenizer_3, prompt, words, name, 0, call["max_sequence_length"])
        return [clip_rows + p for p in found]

    def word_positions(self, pipe, prompt, words, name, call):
        return super().word_positions(pipe, prompt, words, name, call) + self.t5_positions(
            pipe, prompt, words, name, call)

    def key_length(self, pipe, call):
        return pipe.tokenizer_max_length + call["max_sequence_length"]

    def encode(self, pipe, texts, call):
        """The phrases' ``encoder_hidden_states`` (CLIP-L and CLIP-G rows, then T5 rows)."""
        lora_scale = (call.get("joint_attention_kwargs") or {}).get("scale")
        return pipe.encode_prompt(prompt=texts, prompt_2=None, prompt_3=None, device=pipe._execution_device,
                                  num_images_per_prompt=1, do_classifier_free_guidance=False,
                                  clip_skip=call.get("clip_skip"), max_sequence_length=call["max_sequence_length"],
                                  lora_scale=lora_scale)[0]

    def joint_moves(self, pipe, prompt: str, phrase: Phrase, call) -> tuple[tuple[int, int, int], ...]:
        """The phrase's CLIP rows (after the start token) and its T5 rows (located with ``tokenizer_3``)."""
        clip_rows = pipe.tokenizer_max_length
        moves = [(1 + phrase.token_start, 1, phrase.num_tokens)]
        start, end = token_span(pipe.tokenizer_3, normalize_prompt(prompt), phrase.char_start, phrase.char_end)
        end = min(end, call["max_sequence_length"] - 1)
        if end > start:
            moves.append((clip_rows + start, clip_rows, end - start))
        return tuple(moves)


FAMILY_TEXT: dict[str, FamilyText] = {"sd": SDText(), "sdxl": SDXLText(), "pixart": PixArtText(), "sd3": SD3Text(),
                                      "flux": FluxText()}


def parent_pipeline(cls: type) -> type:
    """The diffusers pipeline a variant runs: the first base in the MRO that is not an attnctl mixin."""
    return next(base for base in cls.__mro__[1:]
                if issubclass(base, DiffusionPipeline) and not issubclass(base, FamilyPipelineMixin))


def _merged_signature(parent_call: Callable, prepare: Callable) -> inspect.Signature:
    """The parent's ``__call__`` parameters, then the method's (keyword-only), then the parent's ``**kwargs``."""
    parent = list(inspect.signature(parent_call).parameters.values())
    own = [p for p in inspect.signature(prepare).parameters.values() if p.kind is p.KEYWORD_ONLY]
    taken = {p.name for p in parent}
    clash = [p.name for p in own if p.name in taken]
    if clash:
        raise TypeError(f"method arguments {clash} already exist in {parent_call.__qualname__}")
    positional = [p for p in parent if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p for p in parent if p.kind is p.KEYWORD_ONLY]
    var = [p for p in parent if p.kind is p.VAR_KEYWORD]
    return inspect.Signature(positional + keyword + own + var, return_annotation=Any)


class FamilyPipelineMixin:
    """Family dispatch for a method's pipelines: a method mixin subclasses this, and each variant sets
    ``family`` (a name in :data:`attnctl.models.families.FAMILIES`) and inherits the family's diffusers
    pipeline. ``from_pretrained`` on any of them loads the variant of the checkpoint's family."""

    family: ClassVar[str | None] = None
    _variants: ClassVar[dict[str, type]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" not in cls.__dict__:  # a method mixin: it collects its variants
            cls._variants = {}
            return
        family = get_family(cls.family)
        if family.name in cls._variants:
            raise TypeError(f"{cls._variants[family.name].__name__} is already the {family.name} variant")
        cls._variants[family.name] = cls

    @property
    def model_family(self) -> Family:
        return get_family(self.family)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The attention model the controls are installed on (``unet`` or ``transformer``)."""
        return getattr(self, self.model_family.denoiser)

    @property
    def family_text(self) -> FamilyText:
        if self.family not in FAMILY_TEXT:
            raise ValueError(f"{type(self).__name__}: no prompt-token layout for the {self.family} family")
        return FAMILY_TEXT[self.family]

    @classmethod
    def variant_for(cls, family: Family | str) -> type:
        """This method's pipeline class for ``family``; ``ValueError`` naming the families it supports."""
        name = family if isinstance(family, str) else family.name
        if name not in cls._variants:
            method = next(b for b in cls.__mro__ if "_variants" in b.__dict__).__name__
            raise ValueError(f"{method} does not support the {name} family; it supports: "
                             f"{', '.join(cls._variants)}")
        return cls._variants[name]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> DiffusionPipeline:
        """Load the variant of this method for the checkpoint's family (read from ``model_index.json``).

        An unsupported family is a ``ValueError`` before any component is loaded.
        """
        variant = cls.variant_for(detect_family(pretrained_model_name_or_path))
        return super(FamilyPipelineMixin, variant).from_pretrained(pretrained_model_name_or_path, **kwargs)

    def install(self, controls: Sequence[AttentionControl], rows: RowLayout | None = None):
        """``with pipe.install(controls, rows):`` the denoiser runs with ``controls`` and every pass's batch
        declared as ``rows`` (the one place a method pipeline touches the core's controller)."""
        return AttentionController(controls, rows=rows).installed(self.denoiser)


class ControlledPipelineMixin(FamilyPipelineMixin):
    """Base of the method mixins that wrap the parent's ``__call__``; see the module docstring for the recipe.

    A method mixin overrides :meth:`prepare`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" not in cls.__dict__:
            return
        parent = parent_pipeline(cls)

        def __call__(self, *args, **kwargs):  # noqa: N807 (a per-class copy, so each carries its own signature)
            return self._controlled_call(args, kwargs)

        __call__.__signature__ = _merged_signature(parent.__call__, cls.prepare)
        __call__.__doc__ = (f"{cls.__name__}: every argument of ``{parent.__name__}.__call__`` works as there; "
                            f"the method's own arguments are those of :meth:`{cls.__name__}.prepare`.\n\n"
                            f"{inspect.getdoc(cls.prepare) or ''}")
        __call__.__qualname__ = f"{cls.__name__}.__call__"
        cls.__call__ = torch.no_grad()(__call__)

    def prepare(self, call: Mapping[str, Any]) -> MethodRun:
        """The controls for one call. ``call`` holds every parent argument (defaults applied, read-only); the
        method's own arguments follow as keyword-only parameters of the override."""
        raise NotImplementedError

    def _controlled_call(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        own = inspect.signature(type(self).prepare).parameters
        method_kwargs = {name: kwargs.pop(name) for name in list(kwargs)
                         if name in own and own[name].kind is inspect.Parameter.KEYWORD_ONLY}
        parent = parent_pipeline(type(self))
        bound = inspect.signature(parent.__call__).bind(self, *args, **kwargs)
        passed = {name: value for name, value in bound.arguments.items() if name != "self"}
        extra = passed.pop(_var_keyword(parent.__call__), {})
        for name in _STEP_END_ARGUMENTS & set(extra):
            raise ValueError(f"{name} was given but {parent.__name__}.__call__ has no {name}; it would be "
                             "ignored (use its callback=..., callback_steps=... instead)")
        passed.update(extra)
        bound.apply_defaults()
        call = {name: value for name, value in bound.arguments.items() if name != "self"}
        check_call(self, {**call, **method_kwargs})  # every argument, before any model runs
        call, passed, method_kwargs = whole_numbers(call), whole_numbers(passed), whole_numbers(method_kwargs)
        run = self.prepare(_ReadOnly(call), **method_kwargs)
        return_dict = passed.pop("return_dict", True)
        passed.update(run.arguments)
        if run.controls:
            rows = run.rows or guidance_rows(self.conditional_row_count(call))
            with self.install(run.controls, rows), (run.around or nullcontext)():
                output = parent.__call__(self, **passed, return_dict=True)
        else:
            output = parent.__call__(self, **passed, return_dict=True)
        if not return_dict:
            return tuple(getattr(output, f.name) for f in dataclasses.fields(output))
        return run.finish(output)

    # -- helpers methods share ------------------------------------------------------------------------------
    def default_call(self) -> dict[str, Any]:
        """The parent's ``__call__`` defaults (for helpers used outside a call)."""
        parameters = inspect.signature(parent_pipeline(type(self)).__call__).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    def conditional_row_count(self, call: Mapping[str, Any]) -> int:
        """How many conditional rows a pass holds: prompts (or prompt_embeds rows) x images per prompt.

        The families' pipelines batch ``[uncond, cond]`` when guided, cond only otherwise
        (:func:`attnctl.core.guidance_rows` declares both); controls read ``call.rows["cond"]``."""
        prompts = self.prompt_list(call)
        count = len(prompts) if prompts is not None else call["prompt_embeds"].shape[0]
        return count * (call.get("num_images_per_prompt") or 1)

    def image_size(self, call: Mapping[str, Any]) -> tuple[int, int]:
        """(height, width) in pixels the call generates, with the parent's defaults."""
        sample = getattr(self, "default_sample_size", None) or self.denoiser.config.sample_size
        default = sample * self.vae_scale_factor
        return call.get("height") or default, call.get("width") or default

    def prompt_list(self, call: Mapping[str, Any]) -> list[str] | None:
        """The prompts as a list (``None`` with ``prompt_embeds``); ``ValueError`` for other types."""
        prompt = call["prompt"]
        if prompt is None:
            return None
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return prompt
        raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")

    def token_heatmaps(self, store: AttentionStore, call: Mapping[str, Any], num_images: int) -> list[TokenHeatmaps]:
        """Per image, the store's maps of the prompt's tokens at image size (the conditional rows come last)."""
        maps = store.maps(self.image_size(call))[-num_images:]
        text, tokenizer = self.family_text, self.family_text.tokenizer(self)
        prompts = self.prompt_list(call)
        if prompts is None:  # prompt_embeds: positions only
            count = min(maps.shape[1] - text.offset, text.max_tokens(self, call))
            return [TokenHeatmaps([f"#{i}" for i in range(count)], m[text.offset : text.offset + count])
                    for m in maps]
        repeat = num_images // len(prompts)
        result = []
        for index, image_maps in enumerate(maps):
            ids = text.prompt_ids(self, prompts[index // repeat], call)
            tokens = [tokenizer.decode([token]).strip() for token in ids]
            result.append(TokenHeatmaps(tokens, image_maps[text.offset : text.offset + len(ids)]))
        return result


_STEP_END_ARGUMENTS = {"callback_on_step_end", "callback_on_step_end_tensor_inputs"}


def _var_keyword(function: Callable) -> str | None:
    return next((p.name for p in inspect.signature(function).parameters.values() if p.kind is p.VAR_KEYWORD), None)


class _ReadOnly(Mapping):
    """A read-only view of the call's arguments handed to :meth:`ControlledPipelineMixin.prepare`."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
