"""Training-free, reversible attention patches for Hugging Face ViT and CLIP vision towers.

transformers routes every ``ViTAttention`` / ``CLIPAttention`` call through ``ALL_ATTENTION_FUNCTIONS``,
keyed by the tower config's ``_attn_implementation``. A patch registers its own function under a fresh key,
switches the vision tower to it with the public ``set_attn_implementation`` and switches back (and
unregisters) on close, so no module, weight or forward method is replaced; a forward pre-hook on the patch
embeddings records the token grid of each call. CLIP's text tower keeps its own config and is never touched.

Token layout inside the towers: (batch, 1 + H*W, dim), the CLS token first, patches in raster order.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPVisionEmbeddings
from transformers.models.vit.modeling_vit import ViTAttention, ViTEmbeddings

from ..core.windows import covers_grid
from .grid import as_pair
from .neighborhood import cls_window_attention
from .rollout import attention_rollout, cls_saliency

_EMBEDDINGS = (ViTEmbeddings, CLIPVisionEmbeddings)
_ATTENTION = (ViTAttention, CLIPAttention)
_KEY_PREFIX = "attnctl_vision_"
_serial = itertools.count()

# transformers' attention-function signature: (module, query, key, value, attention_mask, **kwargs) with
# query/key/value (batch, heads, tokens, head_dim) -> (output (batch, tokens, heads, head_dim), probs or None)
AttentionFunction = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class VisionTower:
    """The sub-model that owns a ViT/CLIP vision embedding, its patch size and its training token grid."""

    model: PreTrainedModel
    embeddings: nn.Module
    patch_size: tuple[int, int]
    native_grid: tuple[int, int]
    attention_layers: tuple[nn.Module, ...]


def find_vision_tower(model: nn.Module) -> VisionTower:
    """The ViT or CLIP vision tower inside ``model`` (ViTModel, ViTForImageClassification, CLIPModel, ...)."""
    for tower in model.modules():
        embeddings = getattr(tower, "embeddings", None)
        if isinstance(tower, PreTrainedModel) and isinstance(embeddings, _EMBEDDINGS):
            patch = as_pair("patch_size", embeddings.patch_size)
            image = as_pair("image_size", tower.config.image_size)
            layers = tuple(m for m in tower.modules() if isinstance(m, _ATTENTION))
            return VisionTower(tower, embeddings, patch, (image[0] // patch[0], image[1] // patch[1]), layers)
    raise ValueError(
        f"model of type {type(model).__name__} has no ViT or CLIP vision tower "
        "(looked for ViTEmbeddings / CLIPVisionEmbeddings under a transformers PreTrainedModel)"
    )


class AttentionPatch:
    """Routes a vision tower's attention through ``function`` until :meth:`close` or the ``with`` block ends.

    ``function(patch, module, query, key, value, attention_mask, **kwargs)`` follows transformers' attention
    signature with the patch first; :attr:`grid` is the (H, W) patch grid of the forward call in progress and
    :meth:`layer_index` the position of ``module`` in the tower.
    """

    def __init__(self, model: nn.Module, function: Callable[..., Any]) -> None:
        self.tower = find_vision_tower(model)
        current = self.tower.model.config._attn_implementation
        if isinstance(current, str) and current.startswith(_KEY_PREFIX):
            raise ValueError(
                f"the vision tower of {type(model).__name__} already runs the attnctl patch {current!r}; "
                "close it before installing another"
            )
        self.grid: tuple[int, int] | None = None
        self._layers = {id(layer): index for index, layer in enumerate(self.tower.attention_layers)}
        self._previous = current
        self._key = f"{_KEY_PREFIX}{next(_serial)}"
        ALL_ATTENTION_FUNCTIONS[self._key] = lambda *args, **kwargs: function(self, *args, **kwargs)
        self._hook = self.tower.embeddings.register_forward_pre_hook(self._record_grid)
        self.closed = False
        try:
            self.tower.model.set_attn_implementation(self._key)
        except Exception:
            self.close()
            raise

    def _record_grid(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        height, width = args[0].shape[-2:]  # pixel_values (batch, channels, height, width)
        self.grid = (height // self.tower.patch_size[0], width // self.tower.patch_size[1])
        self.on_forward()

    def on_forward(self) -> None:
        """Called at the start of every forward pass of the tower; subclasses reset per-call state here."""
        return None

    def layer_index(self, module: nn.Module) -> int:
        return self._layers[id(module)]

    def close(self) -> None:
        """Restore the tower's previous attention implementation and remove the hook; idempotent."""
        if self.closed:
            return
        self.tower.model.set_attn_implementation(self._previous)
        self._hook.remove()
        del ALL_ATTENTION_FUNCTIONS[self._key]
        self.closed = True

    def __enter__(self) -> AttentionPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stock_eager(module: nn.Module) -> AttentionFunction:
    """The model file's own ``eager_attention_forward`` (ViT and CLIP each define one)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _stock(module: nn.Module, implementation: str) -> AttentionFunction:
    """The function the tower ran before the patch, as ``ALL_ATTENTION_FUNCTIONS`` resolves it."""
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, _stock_eager(module))


class WindowedAttention(AttentionPatch):
    """Inward-window self-attention for inputs larger than the training resolution (FreeSwim's rule for ViTs).

    Each patch token attends to the CLS token and to its inward ``window`` of patches (default: the tower's
    native grid, ``image_size // patch_size``, i.e. the receptive field seen in training); the CLS token keeps
    global attention (:func:`~attnctl.vision.neighborhood.cls_window_attention`). When the window covers the
    call's whole grid the stock function runs, so outputs equal the unpatched model exactly (torch.equal).
    Inference only; pass ``interpolate_pos_encoding=True`` for inputs larger than ``image_size`` as usual.
    """

    def __init__(
        self, model: nn.Module, window: int | tuple[int, int] | None = None, backend: str | None = None
    ) -> None:
        window = None if window is None else as_pair("window", window)  # validated before anything is patched
        super().__init__(model, WindowedAttention._attend)
        self.window = self.tower.native_grid if window is None else window
        self.backend = backend

    def _attend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if self.grid is None:
            raise ValueError("the token grid is unknown: call the model with pixel_values, not inputs_embeds")
        if covers_grid(self.grid, self.window):
            return _stock(module, self._previous)(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        if attention_mask is not None or dropout > 0:
            raise ValueError(
                "windowed attention runs without attention_mask and dropout; call model.eval() and pass no "
                f"mask (got attention_mask={'a tensor' if attention_mask is not None else None}, "
                f"dropout={dropout})"
            )
        out = cls_window_attention(
            query, key, value, self.grid, self.window, scale=scaling, backend=self.backend
        )
        return out.transpose(1, 2).contiguous(), None


def windowed_attention(
    model: nn.Module, window: int | tuple[int, int] | None = None, backend: str | None = None
) -> WindowedAttention:
    """``with windowed_attention(model): model(big_pixels, interpolate_pos_encoding=True)``; see the class.

    ``backend`` picks the window kernel (:func:`attnctl.core.window_attention.window_attention`).
    """
    return WindowedAttention(model, window, backend)


class AttentionMaps(AttentionPatch):
    """Records every layer's attention probabilities with the model's own eager attention.

    Outputs equal the stock eager implementation exactly (the same function runs) and the SDPA default within
    float rounding. :attr:`maps` holds the last forward call's (batch, heads, 1+H*W, 1+H*W) tensors, first
    layer first; :meth:`rollout` and :meth:`saliency` interpret them.
    """

    def __init__(self, model: nn.Module) -> None:
        self.maps: list[torch.Tensor] = []
        super().__init__(model, AttentionMaps._attend)

    def on_forward(self) -> None:
        self.maps = []

    def _attend(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        output, probs = _stock_eager(module)(module, *args, **kwargs)
        self.maps.append(probs.detach())
        return output, probs

    def rollout(self, residual: bool = True) -> torch.Tensor:
        """Attention rollout of the recorded maps, (batch, 1+H*W, 1+H*W)."""
        return attention_rollout(self.maps, residual=residual)

    def saliency(self, residual: bool = True) -> torch.Tensor:
        """The CLS token's rollout over the patches, (batch, H, W)."""
        if self.grid is None:
            raise ValueError("no forward pass was recorded yet; run the model inside the with-block first")
        return cls_saliency(self.rollout(residual), self.grid)


def record_attention(model: nn.Module) -> AttentionMaps:
    """``with record_attention(model) as maps: model(pixels)``, then ``maps.maps`` and ``maps.saliency()``."""
    return AttentionMaps(model)
