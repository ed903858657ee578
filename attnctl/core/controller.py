"""Run state for one pipeline call and the context manager that installs it on a model.

:class:`AttentionController` owns what changes while sampling (the denoising step, the branch, the declared
batch rows, the latent geometry) and the controls. Calls see it only as a frozen
:class:`~attnctl.core.run.RunState` (``controller.run``), replaced before every denoiser pass; pipelines change
it only through :meth:`AttentionController.declared`. ``with controller.installed(model):`` swaps every
attention processor of ``model`` for the controlled one its registry entry names
(:mod:`attnctl.core.families`) and always puts the originals back, also when the body raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .branch import install_branch_hook
from .controls import AttentionCall, AttentionControl
from .layers import LayerInfo
from .rows import RowLayout
from .run import RunState

ProcessorFactory = Callable[[Any, LayerInfo, torch.nn.Module], Any]


def _timestep_value(timestep: Any) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0]) if timestep.numel() else None
    return float(timestep)


class AttentionController:
    """Per-call state shared by all controlled processors of one model.

    ``step`` counts denoiser evaluations at distinct timesteps (0-based), so a batched classifier-free
    guidance pass and separate cond/uncond passes (Wan) both see one step per timestep.

    Args:
        controls: the controls, run in this order at every hook.
        rows: the layout of every pass's batch (e.g. :func:`~attnctl.core.rows.guidance_rows`); a pipeline
            whose passes differ declares each with :meth:`declared` instead.
    """

    def __init__(self, controls: Iterable[AttentionControl] = (), rows: RowLayout | None = None) -> None:
        self.controls: list[AttentionControl] = list(controls)
        self.layers: list[LayerInfo] = []
        self._rows = rows
        self._declared_branch: str | None = None
        self._context_branch: str | None = None
        self._run = RunState(row_layout=rows)

    @property
    def run(self) -> RunState:
        """The read-only state of the pass in progress."""
        return self._run

    # read-only views kept for callers of the earlier attribute API
    step = property(lambda self: self._run.step)
    timestep = property(lambda self: self._run.timestep)
    branch = property(lambda self: self._run.branch)
    sample_shape = property(lambda self: self._run.sample_shape)
    sample_hw = property(lambda self: self._run.sample_hw)
    forward_count = property(lambda self: self._run.forward_count)

    def reset(self) -> None:
        self._run = RunState(row_layout=self._rows)
        self._declared_branch = self._context_branch = None
        for control in self.controls:
            control.reset()

    def controls_for(self, call: AttentionCall) -> list[AttentionControl]:
        return [c for c in self.controls if c.applies_to(call)]

    @contextmanager
    def declared(self, branch: str | None = None, rows: RowLayout | None = None) -> Iterator[None]:
        """Declare the passes run inside the ``with`` body: their branch name and their batch layout.

        PrimeComposer declares its correlation, generator and inversion passes this way. The previous
        declaration is restored afterwards.
        """
        saved = self._declared_branch, self._rows
        self._declared_branch, self._rows = branch, rows if rows is not None else self._rows
        self._run = dataclasses.replace(self._run, branch=self._branch(), row_layout=self._rows)
        try:
            yield
        finally:
            self._declared_branch, self._rows = saved
            self._run = dataclasses.replace(self._run, branch=self._branch(), row_layout=self._rows)

    def _branch(self) -> str | None:
        return self._declared_branch if self._declared_branch is not None else self._context_branch

    def _set_context_branch(self, name: str) -> None:
        """Called by the :class:`~attnctl.core.branch.BranchHook` with the pipeline's ``cache_context`` name."""
        self._context_branch = name
        self._run = dataclasses.replace(self._run, branch=self._branch())

    def on_model_forward(self, sample: torch.Tensor | None, timestep: Any, image_grid: tuple[int, ...] | None = None,
                         text_tokens: int | None = None) -> None:  # fmt: skip
        """Called before each denoiser evaluation: a new :class:`RunState` for the pass."""
        run = self._run
        value = _timestep_value(timestep)
        step = run.step + 1 if run.step < 0 or value != run.timestep else run.step
        self._run = dataclasses.replace(
            run, step=step, timestep=value, forward_count=run.forward_count + 1,
            sample_shape=run.sample_shape if sample is None else tuple(sample.shape),
            image_grid=image_grid, text_tokens=text_tokens,
        )  # fmt: skip

    @contextmanager
    def installed(
        self, model: torch.nn.Module, processor_factory: ProcessorFactory | None = None
    ) -> Iterator[AttentionController]:
        """Replace every attention processor of ``model`` with a controlled one for the ``with`` body.

        Each layer's processor comes from :mod:`attnctl.core.families` (a ``ValueError`` names any module or
        stock processor class attnctl does not control), or from ``processor_factory(controller, layer,
        module)`` when given. On models with diffusers' ``cache_context`` (DiTs such as Wan) a
        :class:`~attnctl.core.branch.BranchHook` also sets the branch from the pipeline's
        ``cache_context("cond")`` / ``("uncond")`` on every pass.
        """
        from .families import entry_for, forward_reader  # the registry imports every family's processor

        originals = dict(model.attn_processors)  # set_attn_processor pops from the dict it gets: keep a copy
        modules = dict(model.named_modules())
        self.reset()
        self.layers = []
        processors = {}
        for order, name in enumerate(originals):
            module = modules[name.removesuffix(".processor")]
            if processor_factory is not None:
                is_cross, joint = bool(getattr(module, "is_cross_attention", False)), False
            else:
                entry = entry_for(name, module)
                is_cross, joint = entry.kind(module)
            layer = LayerInfo.from_name(name, is_cross, order, joint)
            self.layers.append(layer)
            if processor_factory is not None:
                processors[name] = processor_factory(self, layer, module)
            else:
                processors[name] = entry.build(self, layer, originals[name])
        read = forward_reader(model)

        def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            info = read(args, kwargs)
            self.on_model_forward(info.sample, info.timestep, info.image_grid, info.text_tokens)

        handle = model.register_forward_pre_hook(pre_forward, with_kwargs=True)
        remove_branch_hook = install_branch_hook(model, self._set_context_branch)
        try:
            model.set_attn_processor(processors)
            yield self
        finally:
            remove_branch_hook()
            handle.remove()
            model.set_attn_processor(dict(originals))
