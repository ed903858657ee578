"""UI input checked at the edge: values become pipeline arguments, mistakes become ``gr.Error`` messages.

Every message names the field as the page labels it, the value given and what to enter instead; pipeline
``ValueError``s (which already name the argument and the fix) are shown as they are, never as a stack trace.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr
import torch

MAX_SEED = 2**32 - 1


def user_error(message: str) -> gr.Error:
    """A ``gr.Error`` for input the person can fix: shown as typed (HTML-escaped), no server traceback."""
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


def seeded_generator(seed: float | None) -> torch.Generator:
    """A CPU generator seeded with the page's seed: the same seed gives the same noise on any device."""
    return torch.Generator("cpu").manual_seed(whole_number(seed, "Seed", 0, MAX_SEED))


def phrase_lines(text: str | None) -> list[str] | None:
    """Phrases typed one per line (blank lines ignored); ``None`` when there are none (parse the prompt)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    return [line for line in lines if line] or None
