"""FreeSwim's settings and the small formulas behind them (window from the native size, attention scale).

FreeSwim (Wu et al. 2025, arXiv 2511.14712; released code WillWu111/FreeSwim): at a resolution above the
model's native one, self-attention sees an inward spatial window as large as the native token grid (all
frames), a full-attention branch lends its cross-attention output to the window branch, and that
cross-attention output is cached across steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import ARGUMENT_KINDS, PIPELINE_ARGUMENTS
from ..core.window_attention import BACKENDS

WAN_PATCH_PIXELS = 16  # Wan: VAE /8 in space, patch (1, 2, 2) -> one token per 16 x 16 pixels
ENTROPY = "entropy"


def native_window(native_grid: tuple[int, int]) -> tuple[int, int]:
    """Spatial window (rows, cols) for a native token grid (h0, w0): ``(2 * (h0 // 2) + 1, 2 * (w0 // 2) + 1)``.

    The receptive field the model saw in training, made odd so the window is centred (FreeSwim's inward window; the
    released code uses half-sizes h0 // 2 and w0 // 2, e.g. 31 x 53 tokens for a 30 x 52 grid at 480 x 832).
    """
    return tuple(2 * (size // 2) + 1 for size in native_grid)


def entropy_scale(native_tokens: int, head_dim: int) -> float:
    """Softmax scale ``sqrt(log(2 n0) / log(n0) / d)`` for self-attention (FreeSwim, released code).

    Slightly sharper than the stock ``1 / sqrt(d)`` (x1.046 for n0 = 30 * 52 tokens per native frame), the
    entropy-preserving log-length scaling evaluated at twice the native frame's token count ``n0``.
    """
    if native_tokens < 2:
        raise ValueError(f"native_tokens={native_tokens} must be at least 2 for the entropy scale")
    return math.sqrt(math.log(2 * native_tokens) / math.log(native_tokens) / head_dim)


@dataclass(frozen=True)
class FreeSwimConfig:
    """What FreeSwim does to one transformer.

    Args:
        window: spatial window (rows, cols) in tokens; every query also sees all frames.
        native_tokens: tokens per frame at the native size, ``n0`` of the entropy scale.
        attention_scale: self-attention softmax scale: ``"entropy"`` (FreeSwim's, the default), ``None`` (stock
            ``1/sqrt(head_dim)``) or a positive number.
        dual_path: run the full-attention branch beside the window branch and let its cross-attention output
            override the window branch's (FreeSwim's dual path). Off: plain inward-window attention.
        cache_interval: the full branch runs on every ``cache_interval``-th step of a guided pass and its
            cross-attention outputs are reused in between (1 = no cache).
        guide_uncond: also run the dual path on the unconditional pass (the released no-cache variant);
            by default that pass uses the window branch with its own cross-attention.
        backend, tile: window-attention kernel options (:func:`attnctl.core.window_attention.window_attention`).
        allow_full: a window larger than the token grid along an axis means full attention along it; without
            it that is a ``ValueError`` (the window was probably meant for a larger video).
        cache_device: where cached cross-attention outputs wait between steps: ``None`` beside the activations,
            or e.g. ``"cpu"`` to offload them (pinned host memory, asynchronous copies). The cache holds
            (tokens, dim) per block: about 16 GB in bf16 for Wan2.1-1.3B at 1088 x 1920 x 81, 70 GB for 14B.
    """

    window: tuple[int, int]
    native_tokens: int
    attention_scale: float | str | None = ENTROPY
    dual_path: bool = True
    cache_interval: int = 2
    guide_uncond: bool = False
    backend: str | None = None
    tile: tuple[int, int, int] | None = None
    allow_full: bool = False
    cache_device: str | torch.device | None = None  # stored as a string, e.g. "cpu", "cuda:1"

    def __post_init__(self) -> None:
        # the limits are the pipeline arguments' (attnctl.checks): one place for the API, the CLI and the UI
        window = ARGUMENT_KINDS["window_size"]("window", self.window)
        object.__setattr__(self, "window", tuple(int(w) for w in window))
        ARGUMENT_KINDS["cache_interval"]("cache_interval", self.cache_interval)
        PIPELINE_ARGUMENTS["attention_scale"]("attention_scale", self.attention_scale, None)
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} must be None or one of {BACKENDS}")
        if self.native_tokens < 2:
            raise ValueError(f"native_tokens={self.native_tokens} must be at least 2")
        if self.cache_device is not None:
            try:
                device = torch.device(self.cache_device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"cache_device={self.cache_device!r} is not a torch device; use None, 'cpu' or e.g. 'cuda:1'"
                ) from None
            object.__setattr__(self, "cache_device", str(device))

    @classmethod
    def from_native_size(
        cls, native_height: int, native_width: int, pixels_per_token: int = WAN_PATCH_PIXELS, **options
    ) -> FreeSwimConfig:
        """The config for a model whose native resolution is ``native_height`` x ``native_width`` pixels.

        The window is ``options["window"]`` if given, else :func:`native_window` with ``allow_full`` defaulting to
        True: made odd, that window is one token wider than an even native axis, and on a target no larger than
        native along that axis it is full attention. A window the caller chose must fit the grid.
        """
        for name, value in (("native_height", native_height), ("native_width", native_width)):
            if value < pixels_per_token or value % pixels_per_token:
                raise ValueError(f"{name}={value} must be a positive multiple of {pixels_per_token}")
        grid = (native_height // pixels_per_token, native_width // pixels_per_token)
        if options.get("window") is None:
            options["window"] = native_window(grid)
            options.setdefault("allow_full", True)
        return cls(native_tokens=grid[0] * grid[1], **options)

    def softmax_scale(self, head_dim: int) -> float | None:
        """The self-attention scale for heads of ``head_dim`` channels (None: SDPA's default)."""
        if self.attention_scale == ENTROPY:
            return entropy_scale(self.native_tokens, head_dim)
        return self.attention_scale
