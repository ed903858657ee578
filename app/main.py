"""The Blocks app (``build_app``) and the server around it (``launch``), as ``attnctl ui`` starts them."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import gradio as gr

from attnctl import FreeSwimPipeline, StructuredDiffusionPipeline

from .models import MODEL_QUEUE, ModelCache
from .tabs import composition, freeswim, layout, structured

TITLE = "attnctl: training-free attention control"
CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto; }
#model-row { align-items: flex-end; }
.result img { width: 100%; height: 100%; object-fit: contain; }
"""


def load_models(models: ModelCache, model: str, video_model: str) -> str:
    """Load the picked models now (tabs load them on first use anyway) and say what is held."""
    started = time.perf_counter()
    loaded = [models.resolve(model)]
    models.get(model, StructuredDiffusionPipeline)
    if (video_model or "").strip():
        models.get(video_model, FreeSwimPipeline)
        loaded.append(models.resolve(video_model))
    names = " and ".join(f"`{path}`" for path in loaded)
    return f"Loaded {names} in {time.perf_counter() - started:.1f} s."


def build_app(model: str | None = None, video_model: str | None = None) -> gr.Blocks:
    """The attnctl web UI. ``model``: image model (diffusers folder or hub id; ``None``: the embedded default)
    for the image tabs; ``video_model``: Wan text-to-video model for the FreeSwim tab (no default).

    Nothing is loaded here: each model is read on first use and then kept for every tab.
    """
    models = ModelCache()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}")
        with gr.Row(elem_id="model-row"):
            model_box = gr.Textbox(
                value=model or "",
                label="Image model",
                scale=3,
                placeholder="empty: the embedded default model",
                info="Stable Diffusion 1.x/2.x: a diffusers folder, a hub id (org/name) or `clip`",
            )
            video_model_box = gr.Textbox(
                value=video_model or "",
                label="Video model",
                scale=3,
                placeholder="a Wan text-to-video model",
                info="for FreeSwim: a diffusers folder or a hub id",
            )
            load_button = gr.Button("Load", scale=1, min_width=120)
        status = gr.Markdown()
        structured.build(models, model_box)
        composition.build(models, model_box)
        layout.build(models, model_box)
        freeswim.build(models, video_model_box)
        load_button.click(
            partial(load_models, models),
            inputs=[model_box, video_model_box],
            outputs=status,
            api_name="load_models",
            concurrency_id=MODEL_QUEUE,
        )
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def launch(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    video_model: str | None = None,
    **kwargs: Any,
) -> gr.Blocks:
    """Serve :func:`build_app` on ``host:port`` (this machine only by default) and return the Blocks.

    ``port=None`` takes the first free port from 7860. Other keyword arguments go to ``Blocks.launch``
    (e.g. ``prevent_thread_lock=True`` to return at once; then ``.close()`` the returned Blocks).
    """
    demo = build_app(model, video_model)
    kwargs.setdefault("theme", gr.themes.Soft())
    kwargs.setdefault("css", CSS)
    demo.launch(server_name=host, server_port=port, share=share, **kwargs)
    return demo
