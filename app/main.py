"""The Blocks app (``build_app``) and the server around it (``launch``), as ``attnctl ui`` starts them."""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

import gradio as gr

from attnctl.methods.freeswim import SPEC as FREESWIM
from attnctl.methods.structured import SPEC as STRUCTURED

from .limits import Limits, is_remote
from .models import MODEL_QUEUE, ModelCache
from .tabs import composition, freeswim, layout, structured
from .validation import hide_paths

TITLE = "attnctl: training-free attention control"
CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto; }
#model-row { align-items: flex-end; }
.result img { width: 100%; height: 100%; object-fit: contain; }
"""


def load_models(models: ModelCache, model: str, video_model: str) -> str:
    """Load the picked models now (tabs load them on first use anyway) and say what is held, with the family
    detected for each."""
    started = time.perf_counter()
    picked = [(model, STRUCTURED)] + ([(video_model, FREESWIM)] if (video_model or "").strip() else [])
    loaded = []
    for name, method in picked:
        models.get(name, method)
        source, family = models.checked(name, method)
        loaded.append(f"`{source}` ({family.title})")
    names = " and ".join(loaded)
    return f"Loaded {names} in {time.perf_counter() - started:.1f} s."


def _model_box(value: str | None, label: str, placeholder: str, info: str) -> gr.Textbox:
    """A model field of the top row (empty: the tab's default)."""
    return gr.Textbox(value=value or "", label=label, scale=3, placeholder=placeholder, info=info)


def build_app(model: str | None = None, video_model: str | None = None, limits: Limits | None = None) -> gr.Blocks:
    """The attnctl web UI. ``model``: image model (diffusers folder or hub id; ``None``: the embedded default)
    for the image tabs; ``video_model``: Wan text-to-video model for the FreeSwim tab (no default); ``limits``:
    the server's caps (:class:`~attnctl.app.limits.Limits`; default: its defaults, this machine only).

    Nothing is loaded here: each model is read on first use and then kept for every tab (up to
    ``limits.max_models``).
    """
    limits = limits or Limits()
    hide_paths(limits.remote)
    models = ModelCache(limits=limits)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}")
        with gr.Row(elem_id="model-row"):
            model_box = _model_box(
                model,
                "Image model",
                placeholder="empty: the embedded default model",
                info="Stable Diffusion 1.x/2.x: a diffusers folder, a hub id (org/name) or the embedded `joint`",
            )
            video_model_box = _model_box(
                video_model,
                "Video model",
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
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    return demo


def launch(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    video_model: str | None = None,
    limits: Limits | None = None,
    **kwargs: Any,
) -> gr.Blocks:
    """Serve :func:`build_app` on ``host:port`` (this machine only by default) and return the Blocks.

    ``port=None`` takes the first free port from 7860. ``limits``: the server's caps; ``remote`` is set from
    ``host`` and ``share`` (messages then name no server path). Other keyword arguments go to
    ``Blocks.launch`` (e.g. ``prevent_thread_lock=True`` to return at once; then ``.close()`` the Blocks).
    """
    limits = dataclasses.replace(limits or Limits(), remote=is_remote(host, share))
    demo = build_app(model, video_model, limits)
    kwargs.setdefault("theme", gr.themes.Soft())
    kwargs.setdefault("css", CSS)
    demo.launch(server_name=host, server_port=port, share=share, **kwargs)
    return demo
