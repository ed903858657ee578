"""Method specs: what one method takes, declared once and read by the batch CLI, the UI and the docs.

A :class:`MethodSpec` says which pipeline a method runs (imported for real, inside a function, so the CLI's
``--help`` loads no torch), what it makes, its parameters (:class:`Param`: name, kind with its limits, default,
help) and how they become ``__call__`` arguments (one to one, through a :class:`Converter`, or all together
through ``combine``), and what its records hold (``record``). The parameters every method shares are
:data:`COMMON_PARAMS`.

Readers: the batch job reader validates each job field with the param's kind (:func:`field_kinds`), ``attnctl
generate --help`` lists each method's fields, the UI validates its controls with the same kinds
(``app/validation.py``) and the parameter table of docs/cli.md is :func:`markdown_table` (a test compares).
A param mapped to a pipeline argument takes that argument's kind from :data:`attnctl.checks.ARGUMENT_KINDS`,
so the pipeline's own check and the CLI/UI check are one limit.

This module imports nothing heavy; the specs live in :mod:`attnctl.methods` and the registry in
:mod:`attnctl.batch.methods`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (
    ARGUMENT_KINDS,
    MAX_SEED,
    Integer,
    Json,
    Size,
    Text,
)

#: Frames per second of a video output whose job sets no ``fps`` (Wan 2.1's frame rate).
DEFAULT_FPS = 16
#: The runner's own fields (seeds, naming, bookkeeping): never call arguments.
RUNNER = "runner"


class MethodUnavailable(RuntimeError):
    """The method's pipeline cannot be imported or does not take the arguments the method passes."""


@dataclass(frozen=True)
class Param:
    """One parameter of a method: a job field, a UI control, a row of the docs' table.

    Args:
        name: the job field (``steps``) and the UI's key for it.
        help: one line for ``--help``, the UI and the docs.
        argument: the ``__call__`` argument it maps to one to one (``num_inference_steps``); ``None`` when a
            converter or ``combine`` maps it, or :data:`RUNNER` for the runner's own fields.
        kind: the validator (:mod:`attnctl.checks`); default: the kind of ``argument`` in ``ARGUMENT_KINDS``.
        default: what applies when the field is absent, as text for the docs (default: "the pipeline's").
        is_path: the value names an input file, resolved against the job file's folder.
    """

    name: str
    help: str
    argument: str | None = None
    kind: Any = None
    default: str = "the pipeline's"
    is_path: bool = False

    def __post_init__(self) -> None:
        if self.kind is None:
            if self.argument not in ARGUMENT_KINDS:
                raise ValueError(f"param {self.name!r}: give a kind (argument {self.argument!r} has none)")
            object.__setattr__(self, "kind", ARGUMENT_KINDS[self.argument])

    def validate(self, value: Any) -> Any:
        """The normalised value, or ``ValueError`` naming the param."""
        return self.kind(self.name, value)


@dataclass(frozen=True)
class Converter:
    """Turns one job field into the ``__call__`` arguments it names (a size into width and height, ...)."""

    arguments: tuple[str, ...]
    convert: Callable[[Any], tuple[Any, ...]]

    def __call__(self, value: Any) -> dict[str, Any]:
        return dict(zip(self.arguments, self.convert(value), strict=True))


SIZE = Converter(("width", "height"), tuple)

#: The params every method takes.
COMMON_PARAMS: tuple[Param, ...] = (
    Param("prompt", "the text prompt (required)", "prompt", Text(), default="required"),
    Param("negative_prompt", "what to steer away from", "negative_prompt", Text(allow_empty=True), default="none"),
    Param("seed", "seed of sample 0; sample k uses seed + k", RUNNER, Integer(0, MAX_SEED),
          default="derived from --seed, the line and the sample"),
    Param("steps", "denoising steps", "num_inference_steps"),
    Param("guidance", "classifier-free guidance scale", "guidance_scale"),
    Param("size", 'output size: 512 or "WIDTHxHEIGHT"', None, Size(8), default="the model's"),
    Param("samples", "outputs for this line", RUNNER, Integer(1, 100_000), default="1"),
    Param("name", "file stem in the flat layout (sanitised)", RUNNER, Text(), default="from the prompt"),
    Param("metadata", "free-form, copied into the manifest", RUNNER, Json(dict, '{"category": "color"}'),
          default="none"),
    Param("tag", "GenEval task tag, copied to GenEval's metadata.jsonl", RUNNER, Text(), default="none"),
    Param("include", "GenEval include clauses", RUNNER, Json(list, '[{"class": "car", "count": 1}]'),
          default="none"),
    Param("exclude", "GenEval exclude clauses", RUNNER, Json(list, '[{"class": "car", "count": 2}]'),
          default="none"),
)


def _job_value(value: Any) -> Any:
    """``value`` written as a job line would: sizes as ``"WIDTHxHEIGHT"``, tuples as lists."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class MethodSpec:
    """One method: its pipeline, what it makes, its params and how they become call arguments.

    Args:
        name: ``--method`` name.
        title: what the UI and the docs call it.
        pipeline: returns the pipeline class (a real import inside, so importing the spec stays cheap).
        output: ``"image"`` or ``"video"``.
        help: one line for ``--help``.
        params: the method's own params (beside :data:`COMMON_PARAMS`).
        converters: param name -> converter to call arguments (files to images, sizes to width/height).
        combine: ``(kwargs, fields, pipe) -> kwargs``: arguments built from several params at once (params
            with ``argument=None`` and no converter), with the loaded pipeline at hand.
        combined_arguments: the ``__call__`` arguments ``combine`` produces.
        export_fields: params used when writing the output (``fps``), not passed to the pipeline.
        offload_arguments: ``__call__`` arguments added by ``--cpu-offload``.
        record: extra manifest fields from the pipeline output.
        capability: the model-family capability it needs (:mod:`attnctl.models.families`); ``None``: the
            family ``sd`` (Stable Diffusion 1.x/2.x) only.
        preflight: checks a whole run's jobs before any model loads (``ValueError`` saying what is missing).
    """

    name: str
    title: str
    pipeline: Callable[[], type]
    output: str
    help: str
    params: tuple[Param, ...] = ()
    converters: Mapping[str, Converter] = field(default_factory=dict)
    combine: Callable[[dict[str, Any], Mapping[str, Any], Any], dict[str, Any]] | None = None
    combined_arguments: tuple[str, ...] = ()
    export_fields: frozenset[str] = frozenset()
    offload_arguments: Mapping[str, Any] = field(default_factory=dict)
    record: Callable[[Any], dict[str, Any]] | None = None
    capability: str | None = None
    preflight: Callable[[Sequence[Any]], None] | None = None

    @property
    def all_params(self) -> dict[str, Param]:
        return {p.name: p for p in (*COMMON_PARAMS, *self.params)}

    @property
    def all_arguments(self) -> dict[str, str]:
        """Param -> ``__call__`` argument, for the params mapped one to one."""
        return {p.name: p.argument for p in self.all_params.values() if p.argument not in (None, RUNNER)}

    @property
    def all_converters(self) -> dict[str, Converter]:
        return {"size": SIZE, **self.converters}

    @property
    def fields(self) -> frozenset[str]:
        """Every job field this method reads."""
        return frozenset(self.all_params)

    @property
    def runner_fields(self) -> frozenset[str]:
        return frozenset(p.name for p in self.all_params.values() if p.argument == RUNNER)

    def pipeline_class(self) -> type:
        """Import the pipeline class; :class:`MethodUnavailable` says what is missing."""
        try:
            return self.pipeline()
        except ImportError as err:
            raise MethodUnavailable(
                f"--method {self.name} is not available in this attnctl installation ({err}); choose another "
                "--method or update attnctl"
            ) from None

    def require_family(self, family: Any) -> None:
        """``ValueError`` saying which families this method supports when ``family`` is not one of them."""
        if self.capability is not None:
            family.require(self.capability)
        elif family.name != "sd":
            raise ValueError(f"--method {self.name} supports the family sd (Stable Diffusion 1.x/2.x), not "
                             f"{family.title} ({family.name})")

    def check_signature(self, pipeline_class: type) -> None:
        """Raise :class:`MethodUnavailable` if ``__call__`` lacks a named argument this method can pass."""
        parameters = inspect.signature(pipeline_class.__call__).parameters
        passed = {**{a: f for f, a in self.all_arguments.items()}, "generator": "seed"}
        passed.update({a: f for f, c in self.all_converters.items() for a in c.arguments})
        passed.update({a: "combined" for a in self.combined_arguments})
        passed.update({a: "--cpu-offload" for a in self.offload_arguments})
        missing = [f"{argument} (field {name!r})" for argument, name in passed.items() if argument not in parameters]
        if missing:
            raise MethodUnavailable(
                f"--method {self.name}: {pipeline_class.__name__}.__call__ has no argument " + ", ".join(missing)
                + f"; the method's spec and this pipeline disagree (see attnctl/methods/{self.name}.py)"
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
        return self.combine(kwargs, fields, pipe) if self.combine is not None else kwargs

    def parameters(self, fields: Mapping[str, Any], pipeline_class: type) -> dict[str, Any]:
        """The generation parameters in job-field terms (so they can be pasted back into a job line).

        Fields the line leaves out are filled with the pipeline's own defaults where the signature has a
        plain value for them (``steps`` -> ``num_inference_steps=50``).
        """
        skip = self.runner_fields | {"prompt", "negative_prompt"}
        used = {name: value for name, value in fields.items() if name in self.fields and name not in skip}
        signature = inspect.signature(pipeline_class.__call__).parameters
        for name, argument in self.all_arguments.items():
            default = signature[argument].default if argument in signature else inspect.Parameter.empty
            if name not in skip and name not in used and isinstance(default, (int, float, str)):
                used[name] = default
        return {name: _job_value(value) for name, value in sorted(used.items())}

    def media(self, output: Any) -> Any:
        """The one image (PIL) or video (frames) of a single-prompt, single-sample pipeline output."""
        return output.frames[0] if self.output == "video" else output.images[0]


def field_kinds(methods: Mapping[str, MethodSpec]) -> dict[str, Param]:
    """Every job field of every method (a job file may drive several methods); a field two methods declare
    must mean the same there (same kind), else ``ValueError``."""
    params: dict[str, Param] = {}
    for method in methods.values():
        for name, param in method.all_params.items():
            if name in params and params[name].kind != param.kind:
                raise ValueError(f"field {name!r} has two kinds: {params[name].kind} and {param.kind}")
            params.setdefault(name, param)
    return params


def markdown_table(methods: Mapping[str, MethodSpec]) -> str:
    """The job-field table of docs/cli.md: field, kind and limits, default, methods that read it, help."""
    rows = ["| field | kind | default | used by | meaning |", "|---|---|---|---|---|"]
    common = {p.name for p in COMMON_PARAMS}
    for name, param in field_kinds(methods).items():
        users = "all" if name in common else ", ".join(m.name for m in methods.values() if name in m.fields)
        rows.append(f"| `{name}` | {param.kind.describe()} | {param.default} | {users} | {param.help} |")
    return "\n".join(rows)
