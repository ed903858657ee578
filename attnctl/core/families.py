"""The one registry of attention module classes attnctl controls, and what a denoiser pass tells the core.

:data:`REGISTRY` maps each attention module class to the stock processor classes attnctl reproduces on it
and the controlled processor that replaces each. Installing on any other module class, or over a stock
processor not listed (a fused, xformers or third-party one), raises a ``ValueError`` naming it and the
supported families: attnctl never installs a processor it cannot prove equal to the stock one.

Adding a model family: write its processor on :class:`attnctl.core.engine.ControlledProcessor`, add one
:class:`Entry` here, and, if its denoiser's patch grid or text length is not read by :func:`forward_info`,
teach that function to read it (docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    JointAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
)
from diffusers.models.transformers.transformer_flux import (
    FluxAttention,
    FluxAttnProcessor,
    FluxIPAdapterAttnProcessor,
)
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from ..freeswim.wan_processor import ControlledWanAttnProcessor
from .controls import ControlSource
from .joint import (
    ControlledFluxAttnProcessor,
    ControlledFluxIPAdapterProcessor,
    ControlledJointAttnProcessor,
    ControlledSD3IPAdapterProcessor,
)
from .layers import LayerInfo
from .processor import ControlledAttnProcessor, ControlledIPAdapterAttnProcessor


@dataclass(frozen=True)
class Entry:
    """One (module class, stock processor class) pair attnctl controls.

    ``build(controller, layer, stock)`` makes the controlled processor from the layer's stock one;
    ``kind(module)`` says whether the layer is ``(is_cross, joint)``.
    """

    families: str
    build: Callable[[ControlSource, LayerInfo, Any], Any]
    kind: Callable[[torch.nn.Module], tuple[bool, bool]]


def _cross_kind(module: torch.nn.Module) -> tuple[bool, bool]:
    return bool(getattr(module, "is_cross_attention", False)), False


def _joint_kind(module: torch.nn.Module) -> tuple[bool, bool]:
    joint = getattr(module, "add_q_proj", None) is not None  # SD3.5's attn2 has no text stream
    return joint, joint


def _always_joint(module: torch.nn.Module) -> tuple[bool, bool]:
    return True, True  # Flux: double blocks get the text stream apart, single blocks joined


UNET = "SD 1.x/2.x, SDXL, PixArt-Sigma"
REGISTRY: dict[type, dict[type, Entry]] = {
    Attention: {
        AttnProcessor2_0: Entry(UNET, lambda c, layer, stock: ControlledAttnProcessor(c, layer), _cross_kind),
        IPAdapterAttnProcessor2_0: Entry(f"{UNET} with IP-Adapter", ControlledIPAdapterAttnProcessor, _cross_kind),
        JointAttnProcessor2_0: Entry("SD3/3.5", lambda c, layer, stock: ControlledJointAttnProcessor(c, layer),
                                     _joint_kind),  # fmt: skip
        SD3IPAdapterJointAttnProcessor2_0: Entry("SD3/3.5 with IP-Adapter", ControlledSD3IPAdapterProcessor,
                                                 _joint_kind),  # fmt: skip
    },
    FluxAttention: {
        FluxAttnProcessor: Entry("Flux", ControlledFluxAttnProcessor, _always_joint),
        FluxIPAdapterAttnProcessor: Entry("Flux with IP-Adapter", ControlledFluxIPAdapterProcessor, _always_joint),
    },
    WanAttention: {WanAttnProcessor: Entry("Wan 2.1/2.2 (T2V, I2V, VACE)", ControlledWanAttnProcessor, _cross_kind)},
}


def supported() -> str:
    """'family (Module + StockProcessor)' for every registry entry, for error messages and docs."""
    return "; ".join(
        f"{entry.families} ({module.__name__} + {stock.__name__})"
        for module, entries in REGISTRY.items()
        for stock, entry in entries.items()
    )


def entry_for(name: str, module: torch.nn.Module) -> Entry:
    """The registry entry of the layer ``name``; a ``ValueError`` naming the class when there is none."""
    entries = REGISTRY.get(type(module))
    if entries is None:
        raise ValueError(f"layer {name} is a {type(module).__name__}, which attnctl does not control; "
                         f"supported: {supported()}")  # fmt: skip
    stock = module.processor
    entry = entries.get(type(stock))
    if entry is None:
        raise ValueError(
            f"layer {name} runs {type(stock).__name__} on its {type(module).__name__}, which attnctl does not "
            f"reproduce (fused projections: call unfuse_qkv_projections() first); supported: {supported()}"
        )
    return entry


@dataclass(frozen=True)
class ForwardInfo:
    """What one denoiser pass tells the processors (see :class:`attnctl.core.run.RunState`)."""

    sample: torch.Tensor | None
    timestep: Any
    image_grid: tuple[int, ...] | None
    text_tokens: int | None


def _patch_grid(model: torch.nn.Module, sample: torch.Tensor | None) -> tuple[int, ...] | None:
    """(h/p, w/p) of a 4-D latent or (f/pt, h/ph, w/pw) of a 5-D one, for transformers with a patch size."""
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    if patch is None or sample is None or sample.ndim not in (4, 5):
        return None
    sizes = sample.shape[2:]
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch,) * len(sizes)
    if len(patch) != len(sizes):
        return None
    return tuple(size // p for size, p in zip(sizes, patch))


def _flux_grid(img_ids: torch.Tensor | None) -> tuple[int, int] | None:
    """Flux's packed latent grid: its position ids count rows in column 1 and columns in column 2."""
    if img_ids is None:
        return None
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


def forward_reader(model: torch.nn.Module) -> Callable[[tuple, dict], ForwardInfo]:
    """A function of a forward call's ``(args, kwargs)`` that reads the latent, timestep and token layout.

    Arguments are bound to the forward's signature once, by name, so positional and keyword calls read
    alike: ``sample`` (UNets) or ``hidden_states`` (transformers), ``timestep``, Flux's ``img_ids``/``txt_ids``.
    """
    signature = inspect.signature(model.forward)

    def read(args: tuple, kwargs: dict) -> ForwardInfo:
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = dict(kwargs)
        sample = bound.get("sample", bound.get("hidden_states"))
        sample = sample if isinstance(sample, torch.Tensor) else None
        grid = _patch_grid(model, sample)
        txt_ids = bound.get("txt_ids")
        if bound.get("img_ids") is not None:
            grid = _flux_grid(bound["img_ids"])
        text_tokens = None if txt_ids is None else int(txt_ids.shape[-2])
        return ForwardInfo(sample, bound.get("timestep"), grid, text_tokens)

    return read
