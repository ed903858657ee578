"""Components several tabs share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from attnctl.spec import COMMON_PARAMS

from .limits import Limits

PARAMS = {p.name: p for p in COMMON_PARAMS}


@contextmanager
def method_tab(title: str, tab_id: str, intro: str) -> Iterator[None]:
    """A method's tab (``id`` ``tab_id``, element ``<tab_id>-tab``) that opens with ``intro`` in Markdown."""
    with gr.Tab(title, id=tab_id, elem_id=f"{tab_id}-tab"):
        gr.Markdown(intro)
        yield


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
