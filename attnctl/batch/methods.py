"""The ``--method`` registry: for each method, its pipeline class and how job fields become call arguments.

A :class:`Method` imports its pipeline lazily, so a method whose pipeline is not installed fails with a clear
"not available" message per item instead of breaking the CLI, and works as soon as the pipeline's module
exists. Fields map to ``__call__`` arguments either one to one (``steps`` -> ``num_inference_steps``) or
through a converter (``size`` -> ``width``, ``height``; an image path -> a loaded image). Every argument is
checked against the pipeline's signature before the first call, so a method table that drifted from its
pipeline says so rather than having the argument silently swallowed by ``**kwargs``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Fields every method passes one to one; ``size`` goes through the :data:`SIZE` converter.
COMMON_ARGUMENTS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
}
#: Fields holding a (width, height) size.
SIZE_FIELDS = frozenset({"size", "native_size"})
#: Fields the runner itself consumes (seeds, naming, bookkeeping); never call arguments.
RUNNER_FIELDS = frozenset({"seed", "samples", "name", "metadata", "tag", "include", "exclude"})


class MethodUnavailable(RuntimeError):
    """The method's pipeline cannot be imported or does not take the arguments the method passes."""


@dataclass(frozen=True)
class Converter:
    """Turns one job field into the ``__call__`` arguments it names (a size into width and height, ...)."""

    arguments: tuple[str, ...]
    convert: Callable[[Any], tuple[Any, ...]]

    def __call__(self, value: Any) -> dict[str, Any]:
        return dict(zip(self.arguments, self.convert(value), strict=True))


def _load_image(mode: str) -> Callable[[str], tuple[Any]]:
    """Load the image file a field names, converted to ``mode`` ("RGB" for pictures, "L" for masks)."""

    def load(path: str) -> tuple[Any]:
        import PIL.Image

        with PIL.Image.open(path) as image:
            return (image.convert(mode),)

    return load


def _load_video(path: str) -> tuple[Any]:
    from diffusers.utils import load_video

    return (load_video(path),)


SIZE = Converter(("width", "height"), tuple)


def _phrases_record(output: Any) -> dict[str, Any]:
    """The phrases structured guidance used, with token spans, for the manifest."""
    return {"phrases": [{"text": p.text, "tokens": [p.token_start, p.token_end]} for p in output.phrases[0]]}


def _regions(kwargs: dict[str, Any], pipe: Any) -> dict[str, Any]:
    """``phrases`` + pixel ``boxes`` -> ``regions=[(phrase, normalised box), ...]`` for RegionalDiffusionPipeline.

    Boxes are in pixels of the output image (``size``, else the model's default size) and are normalised to
    [0, 1] as the pipeline takes them.
    """
    phrases, boxes = kwargs.pop("phrases", None), kwargs.pop("boxes", None)
    if phrases is None and boxes is None:
        return kwargs
    if phrases is None or boxes is None or len(phrases) != len(boxes):
        raise ValueError(
            f"regional: phrases ({0 if phrases is None else len(phrases)}) and boxes "
            f"({0 if boxes is None else len(boxes)}) must come together, one box per phrase"
        )
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = kwargs.get("width") or default, kwargs.get("height") or default
    regions = []
    for index, (phrase, (x0, y0, x1, y1)) in enumerate(zip(phrases, boxes)):
        if x1 > width or y1 > height:
            raise ValueError(f"boxes[{index}]={[x0, y0, x1, y1]} (pixels) reaches outside the {width}x{height} image")
        regions.append((phrase, (x0 / width, y0 / height, x1 / width, y1 / height)))
    return {**kwargs, "regions": regions}


def _job_value(name: str, value: Any) -> Any:
    """``value`` written as a job line would: sizes as ``"WIDTHxHEIGHT"``, tuples as lists."""
    if name in SIZE_FIELDS:
        return f"{value[0]}x{value[1]}"
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Method:
    """One ``--method``: where its pipeline lives, what it makes, and how job fields become call arguments."""

    name: str
    module: str
    class_name: str
    output: str  # "image" or "video"
    help: str
    arguments: Mapping[str, str] = field(default_factory=dict)  # job field -> __call__ argument
    converters: Mapping[str, Converter] = field(default_factory=dict)  # job field -> converted arguments
    export_fields: frozenset[str] = frozenset()  # fields used when writing the output (fps)
    record: Callable[[Any], dict[str, Any]] | None = None  # extra manifest fields from the pipeline output
    # arguments built from several fields at once, with the loaded pipeline at hand: (kwargs, pipe) -> kwargs
    combine: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    combined_arguments: tuple[str, ...] = ()  # the __call__ arguments ``combine`` produces
    offload_arguments: Mapping[str, Any] = field(default_factory=dict)  # __call__ arguments added by --cpu-offload

    @property
    def all_arguments(self) -> dict[str, str]:
        return {**COMMON_ARGUMENTS, **self.arguments}

    @property
    def all_converters(self) -> dict[str, Converter]:
        return {"size": SIZE, **self.converters}

    @property
    def fields(self) -> frozenset[str]:
        """Every job field this method reads."""
        return frozenset(self.all_arguments) | frozenset(self.all_converters) | self.export_fields | RUNNER_FIELDS

    def pipeline_class(self) -> type:
        """Import the pipeline class; :class:`MethodUnavailable` says what is missing."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise MethodUnavailable(
                f"--method {self.name} is not available in this attnctl installation ({self.module} is missing: "
                f"{err}); choose another --method or update attnctl"
            ) from None
        if not hasattr(module, self.class_name):
            raise MethodUnavailable(
                f"--method {self.name} is not available: {self.module} has no {self.class_name}; update attnctl"
            )
        return getattr(module, self.class_name)

    def check_signature(self, pipeline_class: type) -> None:
        """Raise :class:`MethodUnavailable` if ``__call__`` lacks a named argument this method can pass."""
        parameters = inspect.signature(pipeline_class.__call__).parameters
        passed = {**{a: f for f, a in self.all_arguments.items()}, "generator": "seed"}
        passed.update({a: f for f, c in self.all_converters.items() for a in c.arguments})
        if self.combine is not None:
            consumed = {a for a in passed if a not in parameters}
            passed = {a: f for a, f in passed.items() if a not in consumed}
            passed.update({a: "combined" for a in self.combined_arguments})
        passed.update({a: "--cpu-offload" for a in self.offload_arguments})
        missing = [f"{argument} (field {name!r})" for argument, name in passed.items() if argument not in parameters]
        if missing:
            raise MethodUnavailable(
                f"--method {self.name}: {pipeline_class.__name__}.__call__ has no argument " + ", ".join(missing)
                + "; attnctl's method table and this pipeline disagree (see attnctl/batch/methods.py)"
            )

    def call_kwargs(self, fields: Mapping[str, Any], pipe: Any = None, offload: bool = False) -> dict[str, Any]:
        """The ``__call__`` keyword arguments for one item's fields (the generator is added by the runner);
        ``offload`` (``--cpu-offload``) adds the method's memory-saving arguments."""
        kwargs: dict[str, Any] = dict(self.offload_arguments) if offload else {}
        for name, argument in self.all_arguments.items():
            if name in fields:
                kwargs[argument] = fields[name]
        for name, convert in self.all_converters.items():
            if name in fields:
                kwargs.update(convert(fields[name]))
        return self.combine(kwargs, pipe) if self.combine is not None else kwargs

    def parameters(self, fields: Mapping[str, Any], pipeline_class: type) -> dict[str, Any]:
        """The generation parameters in job-field terms (so they can be pasted back into a job line).

        Fields the line leaves out are filled with the pipeline's own defaults where the signature has a
        plain value for them (``steps`` -> ``num_inference_steps=50``).
        """
        skip = RUNNER_FIELDS | {"prompt", "negative_prompt"}
        used = {name: value for name, value in fields.items() if name in self.fields and name not in skip}
        signature = inspect.signature(pipeline_class.__call__).parameters
        for name, argument in self.all_arguments.items():
            default = signature[argument].default if argument in signature else inspect.Parameter.empty
            if name not in skip and name not in used and isinstance(default, (int, float, str)):
                used[name] = default
        return {name: _job_value(name, value) for name, value in sorted(used.items())}

    def media(self, output: Any) -> Any:
        """The one image (PIL) or video (frames) of a single-prompt, single-sample pipeline output."""
        return output.frames[0] if self.output == "video" else output.images[0]


#: Every ``--method``. Pipelines of methods still being written are listed already: they fail per item with
#: :class:`MethodUnavailable` until their module exists.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "plain", "diffusers", "StableDiffusionPipeline", "image",
            "stock Stable Diffusion (diffusers' StableDiffusionPipeline), the baseline",
        ),
        Method(
            "structured", "attnctl.pipelines.structured", "StructuredDiffusionPipeline", "image",
            "Structured Diffusion Guidance (fields: phrases, struct_mode)",
            arguments={"phrases": "phrases", "struct_mode": "struct_mode"},
            record=_phrases_record,
        ),
        Method(
            "compose", "attnctl.pipelines.composer", "PrimeComposerPipeline", "image",
            "PrimeComposer image composition (fields: background, subject, subject_mask, box or target_mask, "
            "subject_words, domain, tau_a, tau_b, tau_c, faithful, inversion_token_id)",
            arguments={
                "box": "target_box", "subject_words": "subject_words", "domain": "domain",
                "tau_a": "tau_a", "tau_b": "tau_b", "tau_c": "tau_c", "faithful": "faithful",
                "inversion_token_id": "inversion_token_id",
            },
            converters={
                "background": Converter(("image",), _load_image("RGB")),
                "subject": Converter(("subject_image",), _load_image("RGB")),
                "subject_mask": Converter(("subject_mask",), _load_image("L")),
                "target_mask": Converter(("target_mask",), _load_image("L")),
            },
        ),
        Method(
            "regional", "attnctl.pipelines.regional", "RegionalDiffusionPipeline", "image",
            "layout-guided text-to-image, each phrase in its box (fields: phrases, boxes, layout_mode, "
            "layout_strength, layout_until, mask_special, region_prompts, base_prompt, base_ratio, region_weights)",
            arguments={
                "phrases": "phrases", "boxes": "boxes", **{name: name for name in (
                    "layout_mode", "layout_strength", "layout_until", "mask_special", "region_prompts",
                    "base_prompt", "base_ratio", "region_weights")},
            },
            combine=_regions,
            combined_arguments=("regions",),
        ),
        Method(
            "freeswim", "attnctl.pipelines.freeswim", "FreeSwimPipeline", "video",
            "FreeSwim high-resolution video on Wan (fields: frames, fps, native_size, strength, cache_interval, "
            "dual_path, video)",
            arguments={
                "frames": "num_frames", "strength": "strength", "cache_interval": "cache_interval",
                "dual_path": "dual_path",
            },
            converters={
                "native_size": Converter(("native_width", "native_height"), tuple),
                "video": Converter(("video",), _load_video),
            },
            export_fields=frozenset({"fps"}),
            offload_arguments={"cache_device": "cpu"},  # the cross-attention cache waits in host memory
        ),
    )
}
