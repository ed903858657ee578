"""UI input checked at the edge: values become pipeline arguments, mistakes become ``gr.Error`` messages.

Every message names the field as the page labels it, the value given and what to enter instead; pipeline
``ValueError``s (which already name the argument and the fix) are shown as they are, never as a stack trace.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import gradio as gr
import torch

from attnctl.spec import COMMON_PARAMS, MethodSpec, Param

SEED = next(p for p in COMMON_PARAMS if p.name == "seed")
#: Absolute paths (POSIX or Windows) in a message; hidden from remote clients (:func:`hide_paths`).
_PATH = re.compile(r"(?:[A-Za-z]:\\|(?<![\w.:/])/)[^\s'\",;:)]+")
_remote = False  # set by build_app: True when the server is reachable beyond this machine


def hide_paths(remote: bool) -> None:
    """Whether error messages hide server paths (the server is reachable from other machines)."""
    global _remote
    _remote = remote


def hiding_paths() -> bool:
    return _remote


def user_error(message: str) -> gr.Error:
    """A ``gr.Error`` for input the person can fix: shown as typed (HTML-escaped), no server traceback; when
    the server is reachable beyond this machine, every absolute path in it reads ``[path]``."""
    if _remote:
        message = _PATH.sub("[path]", message)
    return gr.Error(html.escape(message, quote=False), print_exception=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Show the ``ValueError``s raised inside (bad input found by attnctl or diffusers) as ``gr.Error``."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as err:
        raise user_error(str(err)) from None
    except torch.OutOfMemoryError:
        raise user_error(
            "out of memory: use a smaller target size, fewer frames or a smaller model, then run again"
        ) from None


def required_text(value: str | None, label: str) -> str:
    """``value`` stripped; an error naming ``label`` when it is empty."""
    text = (value or "").strip()
    if not text:
        raise user_error(f"{label} is empty: type some text.")
    return text


def whole_number(value: float | None, label: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; an error naming ``label`` otherwise (the API accepts any JSON)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and value == int(value) and low <= value <= high):
        raise user_error(f"{label} is {value!r}: enter a whole number from {low} to {high}.")
    return int(value)


def param_value(param: Param, value: Any, label: str) -> Any:
    """A control's value checked by a spec param's kind (the check the CLI applies to the job field of that
    name), the error naming the control by its ``label``."""
    try:
        return param.kind(label, value)
    except ValueError as err:
        raise user_error(str(err)) from None


def spec_values(method: MethodSpec, controls: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """A tab's controls checked by ``method``'s params: ``controls`` maps param names to the page's labels."""
    params = method.all_params
    return {name: param_value(params[name], values[name], label) for name, label in controls.items()}


def capped(value: float, cap: float, label: str, flag: str) -> float:
    """``value`` unless it passes this server's ``cap`` (:class:`~attnctl.app.limits.Limits`)."""
    if value > cap:
        raise user_error(f"{label} is {value}: this server allows at most {cap} (started with `attnctl ui "
                         f"{flag} {cap}`; ask its operator for more)")
    return value


def seeded_generator(seed: float | None) -> torch.Generator:
    """A CPU generator seeded with the page's seed (the CLI's range, 0 to 2**63 - 1): the same seed gives the
    same noise on any device."""
    return torch.Generator("cpu").manual_seed(param_value(SEED, seed, "Seed"))


def phrase_lines(text: str | None) -> list[str] | None:
    """Phrases typed one per line (blank lines ignored); ``None`` when there are none (parse the prompt)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    return [line for line in lines if line] or None
