"""The model picker's cache: each model is read from disk once and shared by every tab, up to a bound.

Pipelines are keyed by (resolved model, pipeline class). A second pipeline class on a model already loaded is
built with diffusers' ``from_pipe``, which reuses the loaded modules instead of reading the weights again (all
image tabs are Stable Diffusion subclasses). At most ``max_models`` models are held; the least recently used
one is dropped first. Events that run models share one queue (``concurrency_id``), so pipelines sharing
modules never run at the same time. Models are resolved by :mod:`attnctl.models.resolve`, as the CLI does,
and a tab's method is refused on a model family it does not support.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline

from attnctl.models.families import Family
from attnctl.models.resolve import ModelError, ModelNotFound, NotAPipelineFolder, ResolvedModel, resolve_model
from attnctl.spec import MethodSpec

from .limits import Limits
from .validation import hiding_paths, user_error

MODEL_QUEUE = "model"  # the concurrency_id of every event that runs a model: one queue for all


def model_event(trigger: Callable, fn: Callable, inputs: list, outputs: list, api_name: str) -> Any:
    """``trigger`` (a component's ``click``, an event's ``success``) wired to ``fn``, a run of a model, in the
    model queue (:data:`MODEL_QUEUE`) and the API as ``/<api_name>``; returns the event, for chaining."""
    return trigger(fn, inputs=inputs, outputs=outputs, api_name=api_name, concurrency_id=MODEL_QUEUE)


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_error(text: str, err: ModelError) -> Exception:
    """The page's message for a model that cannot be used; remote clients are not told which paths exist."""
    if err.model is None:
        return user_error(f"Model is empty and {err.reason}; or type a diffusers folder or hub id.")
    if hiding_paths() and isinstance(err, (ModelNotFound, NotAPipelineFolder)):
        return user_error(f"Model {text!r} is not a model this server can load: type a hub id (org/name) or "
                          "the name of a model folder its operator set up.")
    return user_error(f"Model {err.describe()}")


class ModelCache:
    """Loaded pipelines keyed by (model, pipeline class), on ``device`` (default: the accelerator), holding at
    most ``limits.max_models`` models; ``limits`` are the server's caps, which the tabs read from here."""

    def __init__(self, device: torch.device | None = None, limits: Limits | None = None):
        self.device = device or default_device()
        self.limits = limits or Limits()
        self._models: OrderedDict[str, dict[type, DiffusionPipeline]] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, model: str | None) -> ResolvedModel:
        """The picker's text as a loadable model (empty: the embedded default model)."""
        try:
            return resolve_model(model)
        except ModelError as err:
            raise model_error((model or "").strip(), err) from None

    def checked(self, model: str | None, method: MethodSpec) -> tuple[str, Family]:
        """The model's source and family, after checking that ``method`` applies to that family."""
        resolved = self.resolve(model)
        try:
            return resolved.source, resolved.require(method)
        except ModelError as err:
            raise model_error(resolved.source, err) from None

    def describe(self, model: str | None, method: MethodSpec) -> str:
        """``source (family title)``, for the run details."""
        source, family = self.checked(model, method)
        return f"{source} ({family.title})"

    def get(self, model: str | None, method: MethodSpec) -> DiffusionPipeline:
        """The pipeline of ``method`` on ``model``, loaded (or built from a loaded sibling) once."""
        source, family = self.checked(model, method)  # the family check, before anything loads
        from attnctl.pipelines.base import FamilyPipelineMixin  # loaded with the pipeline class anyway

        pipeline_class = method.pipeline_class()
        if issubclass(pipeline_class, FamilyPipelineMixin):  # from_pipe does not pick it as from_pretrained does
            pipeline_class = pipeline_class.variant_for(family)
        with self._lock:
            pipelines = self._models.setdefault(source, {})
            self._models.move_to_end(source)
            if pipeline_class not in pipelines:
                pipelines[pipeline_class] = self._load(source, pipeline_class, next(iter(pipelines.values()), None))
            while len(self._models) > self.limits.max_models:
                self._models.popitem(last=False)  # the least recently used model
            return pipelines[pipeline_class]

    def image_pipeline(self, model: str | None, method: MethodSpec) -> DiffusionPipeline:
        """:meth:`get`, then a clear error unless the model's native image size fits this server's pixel cap."""
        pipe = self.get(model, method)
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        side = (getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size) * pipe.vae_scale_factor
        self.limits.check_pixels(side, side, "The model's image size")
        return pipe

    def _load(self, source: str, pipeline_class: type, sibling: DiffusionPipeline | None) -> DiffusionPipeline:
        try:
            if sibling is not None:
                pipe = pipeline_class.from_pipe(sibling)
            else:
                pipe = pipeline_class.from_pretrained(source).to(self.device)
        except Exception as err:  # any folder or hub id can be typed in: every failure is "not loadable"
            if not self._models.get(source):
                self._models.pop(source, None)  # nothing of it loaded: do not hold its place
            detail = "" if hiding_paths() else f": {type(err).__name__}: {err}"
            raise user_error(
                f"Model {source!r} could not be loaded as {pipeline_class.__name__}{detail}. "
                "Pick a diffusers folder of the kind this tab needs."
            ) from None
        pipe.set_progress_bar_config(disable=True)  # the page's progress bar replaces the console's
        return pipe
