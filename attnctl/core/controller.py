"""Run state for one pipeline call and the context manager that installs it on a model.

:class:`AttentionController` owns what changes while sampling: the denoising step, the guidance branch, the
latent size and the controls. ``with controller.installed(model):`` swaps every attention processor of
``model`` for a controlled one and always puts the originals back, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .branch import install_branch_hook
from .controls import AttentionCall, AttentionControl
from .layers import LayerInfo

ProcessorFactory = Callable[["AttentionController", LayerInfo, torch.nn.Module], Any]


def _default_factory(controller: AttentionController, layer: LayerInfo, module: torch.nn.Module):
    from diffusers.models.attention_processor import Attention

    from .processor import ControlledAttnProcessor

    if not isinstance(module, Attention):
        raise TypeError(
            f"layer {layer.name} is a {type(module).__name__}; pass a processor_factory for this model family"
        )
    return ControlledAttnProcessor(controller, layer)


def _timestep_value(timestep: Any) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0]) if timestep.numel() else None
    return float(timestep)


class AttentionController:
    """Per-call state shared by all controlled processors of one model.

    ``step`` counts denoiser evaluations at distinct timesteps (0-based), so a batched classifier-free
    guidance pass and separate cond/uncond passes (Wan) both see one step per timestep. ``branch`` is set by
    pipelines that run the guidance halves separately.
    """

    def __init__(self, controls: Iterable[AttentionControl] = ()) -> None:
        self.controls: list[AttentionControl] = list(controls)
        self.layers: list[LayerInfo] = []
        self.step = -1
        self.timestep: float | None = None
        self.branch: str | None = None
        self.sample_hw: tuple[int, int] | None = None
        self.sample_shape: tuple[int, ...] | None = None
        self.forward_count = 0

    def reset(self) -> None:
        self.step, self.timestep, self.branch, self.forward_count = -1, None, None, 0
        self.sample_hw = self.sample_shape = None
        for control in self.controls:
            control.reset()

    def controls_for(self, call: AttentionCall) -> list[AttentionControl]:
        return [c for c in self.controls if c.applies_to(call)]

    def on_model_forward(self, sample: torch.Tensor | None, timestep: Any) -> None:
        """Called before each denoiser evaluation with its input sample and timestep."""
        self.forward_count += 1
        value = _timestep_value(timestep)
        if self.step < 0 or value != self.timestep:
            self.step += 1
            self.timestep = value
        if sample is not None:
            self.sample_shape = tuple(sample.shape)
            self.sample_hw = tuple(sample.shape[-2:])

    def _pre_forward_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.on_model_forward(sample if isinstance(sample, torch.Tensor) else None, timestep)

    @contextmanager
    def installed(
        self, model: torch.nn.Module, processor_factory: ProcessorFactory | None = None
    ) -> Iterator[AttentionController]:
        """Replace every attention processor of ``model`` with a controlled one for the ``with`` body.

        On models with diffusers' ``cache_context`` (DiTs such as Wan) a :class:`~attnctl.core.branch.BranchHook`
        also sets ``branch`` from the pipeline's ``cache_context("cond")`` / ``("uncond")`` on every pass.
        """
        factory = processor_factory or _default_factory
        originals = dict(model.attn_processors)  # set_attn_processor pops from the dict it gets: keep a copy
        modules = dict(model.named_modules())
        self.reset()
        self.layers = []
        processors = {}
        for order, name in enumerate(originals):
            module = modules[name.removesuffix(".processor")]
            is_cross = bool(getattr(module, "is_cross_attention", False))
            layer = LayerInfo.from_name(name, is_cross, order)
            self.layers.append(layer)
            processors[name] = factory(self, layer, module)
        handle = model.register_forward_pre_hook(self._pre_forward_hook, with_kwargs=True)
        remove_branch_hook = install_branch_hook(model, self)
        try:
            model.set_attn_processor(processors)
            yield self
        finally:
            remove_branch_hook()
            handle.remove()
            model.set_attn_processor(dict(originals))
