"""Components several tabs share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import gradio as gr

from attnctl.spec import COMMON_PARAMS

from .limits import Limits
from .validation import user_error

PARAMS = {p.name: p for p in COMMON_PARAMS}


@contextmanager
def method_tab(title: str, tab_id: str, intro: str) -> Iterator[None]:
    """A method's tab (``id`` ``tab_id``, element ``<tab_id>-tab``) that opens with ``intro`` in Markdown."""
    with gr.Tab(title, id=tab_id, elem_id=f"{tab_id}-tab"):
        gr.Markdown(intro)
        yield


def decoded_upload(widget: gr.components.Component, preprocess, payload):
    """``preprocess(payload)`` (Gradio decoding an upload) with an upload it cannot decode (a text file renamed
    ``.png``, a truncated or unsupported image) turned into a message naming ``widget``, instead of Gradio's
    generic "the upstream app has raised an exception". Gradio decodes uploads before any attnctl code runs and
    passes ``gr.Error`` through unchanged."""
    try:
        return preprocess(payload)
    except gr.Error:
        raise
    except Exception as err:  # PIL's UnidentifiedImageError, OSError (truncated), DecompressionBombError...
        name = getattr(payload, "orig_name", None) or "the upload"
        raise user_error(
            f"{widget.label}: {name} could not be read as an image ({type(err).__name__}); upload a PNG, JPEG, "
            "WebP or BMP file."
        ) from None


def image_upload(widget: gr.Image | gr.ImageEditor) -> gr.Image | gr.ImageEditor:
    """``widget`` (an image input) with :func:`decoded_upload` around its decoding. Wrapped on the instance:
    a subclass of a Gradio component makes Gradio write a ``.pyi`` stub beside this module at import."""
    widget.preprocess = partial(decoded_upload, widget, widget.preprocess)
    return widget


def result_image(label: str) -> gr.Image:
    """A generated image, scaled up to the column width by the page's CSS (small models draw small images)."""
    return gr.Image(
        label=label, type="pil", format="png", height=300, interactive=False, elem_classes="result"
    )


def seed_box(**layout) -> gr.Number:
    """The seed, over the CLI's whole range 0..2**63 - 1 (a seed copied from a manifest can be pasted; browsers
    keep integers exact up to 2**53, the API up to the limit). The range is checked with the spec's seed kind
    (``seeded_generator``), whose message names the field, rather than by Gradio's bounds, whose does not."""
    kind = PARAMS["seed"].kind
    return gr.Number(label="Seed", value=0, precision=0, info=f"{kind.low} to {kind.high}", **layout)


def steps_slider(limits: Limits, value: int, low: int | None = None) -> gr.Slider:
    """Denoising steps from the spec's minimum (or ``low``) to this server's cap."""
    low = PARAMS["steps"].kind.low if low is None else low
    return gr.Slider(low, limits.max_steps, value=min(value, limits.max_steps), step=1, label="Steps")
