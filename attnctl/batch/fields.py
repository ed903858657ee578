"""The fields a job line may set, each with a validator that normalises its value or explains the fix.

The same validators check a ``.jsonl`` line, a ``.txt`` prompt and the run-level defaults given on the
command line (``--steps``, ``--set FIELD=VALUE``), so one field means one thing everywhere. Validators raise
``ValueError`` with a message that names the field, the value and what to write instead.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``attnctl.layout.MODES`` and ``SPECIAL_MASKS``, repeated so this module stays free of torch (a test ties them).
LAYOUT_MODES = ("forbid", "bias", "prompts")
SPECIAL_MASKS = ("off", "boxes", "all")
#: Seeds are non-negative and below 2**63 so that ``seed + sample`` stays inside ``torch.Generator``'s range.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Field:
    """One job field: its validator, whether it names an input file, and a line of help."""

    name: str
    validate: Callable[[Any], Any]
    help: str
    is_path: bool = False


def _fail(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: expected {expected}")


def _text(name: str, allow_empty: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise _fail(name, value, "a non-empty string" if not allow_empty else "a string")
        return value

    return check


def _integer(name: str, low: int, high: int = MAX_SEED) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(name, value, f"a whole number from {low} to {high}")
        return value

    return check


def _optional_integer(name: str, low: int, high: int = MAX_SEED) -> Callable[[Any], int | None]:
    whole = _integer(name, low, high)
    return lambda value: None if value is None else whole(value)


def _number(name: str, low: float, high: float = math.inf, open_low: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (open_low and value == low):
            bracket = "(" if open_low else "["
            raise _fail(name, value, f"a number in {bracket}{low}, {high}]")
        return float(value)

    return check


def _choice(name: str, options: tuple[Any, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in options:
            raise _fail(name, value, "one of " + ", ".join(repr(o) for o in options))
        return value

    return check


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(name, value, "true or false")
        return value

    return check


def _text_list(name: str) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise _fail(name, value, 'a list of non-empty strings, e.g. ["a red car", "a blue bench"]')
        return list(value)

    return check


def _number_list(name: str, low: float) -> Callable[[Any], list[float]]:
    def check(value: Any) -> list[float]:
        ok = isinstance(value, list) and bool(value) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > low for v in value
        )
        if not ok:
            raise _fail(name, value, f"a non-empty list of numbers above {low}, e.g. [1.0, 2.0]")
        return [float(v) for v in value]

    return check


def _json_kind(name: str, kind: type, example: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise _fail(name, value, f"a JSON {'object' if kind is dict else 'list'}, e.g. {example}")
        return value

    return check


def parse_size(name: str, value: Any, multiple: int = 8) -> tuple[int, int]:
    """``(width, height)`` from an int (square) or a ``"WIDTHxHEIGHT"`` string; both multiples of ``multiple``."""
    if isinstance(value, int) and not isinstance(value, bool):
        width = height = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
        width, height = (int(v) for v in re.split(r"[xX]", value))
    else:
        raise _fail(name, value, 'a size in pixels: 512 (square) or "WIDTHxHEIGHT" such as "768x512"')
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise _fail(name, value, f"positive sizes that are multiples of {multiple}, e.g. 512 or \"768x512\"")
    return width, height


def _size(name: str) -> Callable[[Any], tuple[int, int]]:
    return lambda value: parse_size(name, value)


def _box(name: str, value: Any) -> tuple[float, float, float, float]:
    ok = (
        isinstance(value, list) and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok or not (value[0] < value[2] and value[1] < value[3]) or min(value) < 0:
        raise _fail(name, value, "a box [x0, y0, x1, y1] in pixels with 0 <= x0 < x1 and 0 <= y0 < y1")
    return tuple(float(v) for v in value)


def _boxes(name: str) -> Callable[[Any], list[tuple[float, float, float, float]]]:
    def check(value: Any) -> list[tuple[float, float, float, float]]:
        if not isinstance(value, list) or not value:
            raise _fail(name, value, "a non-empty list of boxes [[x0, y0, x1, y1], ...], one per phrase")
        return [_box(f"{name}[{i}]", box) for i, box in enumerate(value)]

    return check


def _fields(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


#: Every field a job line may carry. Methods declare which of them they use (see :mod:`attnctl.batch.methods`).
FIELDS: dict[str, Field] = _fields(
    Field("prompt", _text("prompt"), "the text prompt (required)"),
    Field("negative_prompt", _text("negative_prompt", allow_empty=True), "what to steer away from"),
    Field("seed", _integer("seed", 0), "seed of sample 0; sample k uses seed + k (default: derived, see seeds)"),
    Field("steps", _integer("steps", 1, 10_000), "denoising steps (num_inference_steps)"),
    Field("guidance", _number("guidance", 0.0, 100.0), "classifier-free guidance scale"),
    Field("size", _size("size"), 'output size: 512 or "WIDTHxHEIGHT"'),
    Field("samples", _integer("samples", 1, 100_000), "how many outputs this prompt gets"),
    Field("name", _text("name"), "file stem for the flat layout (sanitised)"),
    Field("metadata", _json_kind("metadata", dict, '{"category": "color"}'), "free-form, copied to the manifest"),
    Field("tag", _text("tag"), "GenEval task tag, copied to GenEval's metadata.jsonl"),
    Field("include", _json_kind("include", list, '[{"class": "car", "count": 1}]'), "GenEval include clauses"),
    Field("exclude", _json_kind("exclude", list, '[{"class": "car", "count": 2}]'), "GenEval exclude clauses"),
    Field("phrases", _text_list("phrases"), "noun phrases (structured) or region phrases (regional)"),
    Field("struct_mode", _choice("struct_mode", ("values", "keys", None)), 'structured mode: "values", "keys", null'),
    Field("boxes", _boxes("boxes"), "regional: one box [x0, y0, x1, y1] in pixels per phrase"),
    Field("layout_mode", _choice("layout_mode", LAYOUT_MODES),
          'regional: "forbid" (mask phrases outside boxes), "bias" (eDiff-I paint-with-words), "prompts"'),
    Field("layout_strength", _number("layout_strength", 0.0, 100.0), "regional bias: eDiff-I's strength w"),
    Field("layout_until", _number("layout_until", 0.0, 1.0, open_low=True),
          "regional bias: fraction of the steps that get the bias"),
    Field("mask_special", _choice("mask_special", SPECIAL_MASKS),
          'regional: drop end-of-text and padding keys: "off", "boxes", "all"'),
    Field("region_prompts", _text_list("region_prompts"), "regional prompts: one prompt per box"),
    Field("base_prompt", _text("base_prompt"), "regional prompts: prompt for the whole image (default: prompt)"),
    Field("base_ratio", _number("base_ratio", 0.0, 1.0), "regional prompts: base prompt's share inside boxes"),
    Field("region_weights", _number_list("region_weights", 0.0), "regional prompts: one weight per box"),
    Field("background", _text("background"), "compose: background image file", is_path=True),
    Field("subject", _text("subject"), "compose: subject image file", is_path=True),
    Field("subject_mask", _text("subject_mask"), "compose: subject segmentation mask file", is_path=True),
    Field("box", lambda v: _box("box", v), "compose: target box [x0, y0, x1, y1] in background pixels"),
    Field("target_mask", _text("target_mask"), "compose: target region mask file (instead of box)", is_path=True),
    Field("subject_words", _text_list("subject_words"), "compose: the prompt's words naming the subject"),
    Field("domain", _choice("domain", ("same", "cross")), 'compose: "same" or "cross" domain'),
    Field("tau_a", _number("tau_a", 0.0, 1.0), "compose: fraction of steps with attention injection"),
    Field("tau_b", _number("tau_b", 0.0, 1.0), "compose: end of background blending"),
    Field("tau_c", _number("tau_c", 0.0, 1.0), "compose: end of subject re-pasting"),
    Field("faithful", _flag("faithful"), "compose: reproduce the released code where it differs from the paper"),
    Field("inversion_token_id", _optional_integer("inversion_token_id", 0),
          "compose: token of the inversion prompt (null: the empty prompt); must exist in the model's vocabulary"),
    Field("frames", _integer("frames", 1, 100_000), "video: number of frames (Wan: 4k+1)"),
    Field("fps", _integer("fps", 1, 240), "video: frames per second of the mp4"),
    Field("native_size", _size("native_size"), 'freeswim: native (stage-1) size, 480 or "WIDTHxHEIGHT"'),
    Field("strength", _number("strength", 0.0, 1.0, open_low=True), "freeswim: stage-2 re-noising strength"),
    Field("cache_interval", _integer("cache_interval", 1, 10_000), "freeswim: full-branch refresh interval"),
    Field("dual_path", _flag("dual_path"), "freeswim: full branch with cross-attention override (false: window only)"),
    Field("video", _text("video"), "freeswim: input video for video-to-video upscaling", is_path=True),
)


def validate_field(name: str, value: Any) -> Any:
    """The normalised value of field ``name``; unknown names get a did-you-mean hint."""
    field = FIELDS.get(name)
    if field is None:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(FIELDS)}"
        raise ValueError(f"unknown field {name!r}{hint}")
    return field.validate(value)
