"""The model picker's cache: each model is read from disk once and shared by every tab.

Pipelines are keyed by (resolved model path, pipeline class). A second pipeline class on a model already
loaded is built with diffusers' ``from_pipe``, which reuses the loaded modules instead of reading the
weights again (all image tabs are Stable Diffusion subclasses). Events that run models share one queue
(``concurrency_id``), so pipelines sharing modules never run at the same time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from attnctl.cli.common import resolve_model
from attnctl.models.default import default_model_path

from .validation import user_error

MODEL_QUEUE = "model"  # the concurrency_id of every event that runs a model: one run at a time


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelCache:
    """Loaded pipelines keyed by (model path, pipeline class), on ``device`` (default: the accelerator)."""

    def __init__(self, device: torch.device | None = None):
        self.device = device or default_device()
        self._pipelines: dict[tuple[str, type], DiffusionPipeline] = {}
        self._lock = threading.Lock()

    def resolve(self, model: str | None) -> str:
        """The picker's text as a loadable path or hub id (empty: the embedded default model)."""
        text = (model or "").strip()
        if not text:
            try:
                return str(default_model_path())
            except FileNotFoundError as err:
                raise user_error(f"Model is empty and {err}; or type a diffusers folder or hub id.") from None
        try:
            return resolve_model(text)
        except ValueError as err:  # worded for the command line: "--model <value>: what is wrong"
            message = str(err)
            raise user_error(
                f"Model {message.removeprefix('--model ')}"
                if message.startswith("--model ")
                else f"Model {text!r}: {message}"
            ) from None

    def get(self, model: str | None, pipeline_class: type[DiffusionPipeline]) -> DiffusionPipeline:
        """The pipeline of ``pipeline_class`` on ``model``, loaded (or built from a loaded sibling) once."""
        path = self.resolve(model)
        key = (path, pipeline_class)
        with self._lock:
            if key not in self._pipelines:
                self._pipelines[key] = self._load(path, pipeline_class)
            return self._pipelines[key]

    def _load(self, path: str, pipeline_class: type[DiffusionPipeline]) -> DiffusionPipeline:
        sibling = next((pipe for (p, _), pipe in self._pipelines.items() if p == path), None)
        try:
            if sibling is not None:
                pipe = pipeline_class.from_pipe(sibling)
            else:
                pipe = pipeline_class.from_pretrained(path).to(self.device)
        except Exception as err:  # any folder or hub id can be typed in: every failure is "not loadable"
            where = "folder" if Path(path).exists() else "hub id (this machine may have no network)"
            raise user_error(
                f"Model {path!r} ({where}) could not be loaded as {pipeline_class.__name__}: "
                f"{type(err).__name__}: {err}. "
                "Pick a diffusers folder of the kind this tab needs."
            ) from None
        pipe.set_progress_bar_config(disable=True)  # the page's progress bar replaces the console's
        return pipe
