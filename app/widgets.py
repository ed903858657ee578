"""Components several tabs share."""

from __future__ import annotations

import gradio as gr


def result_image(label: str) -> gr.Image:
    """A generated image, scaled up to the column width by the page's CSS (small models draw small images)."""
    return gr.Image(
        label=label, type="pil", format="png", height=300, interactive=False, elem_classes="result"
    )
