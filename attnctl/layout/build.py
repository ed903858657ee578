"""The one regional control and its modes: settings checked in one place, controls built from them.

Modes of ``RegionalDiffusionPipeline(layout_mode=...)``:

* ``"forbid"``  a phrase's tokens are masked outside its box (PrimeComposer's RCA, the original behaviour);
* ``"bias"``    eDiff-I's paint-with-words bias, +inside / -outside, scaled by ``log(1 + sigma) max(QK^T)``;
* ``"prompts"`` regional prompts: each box takes its cross-attention output from its own prompt, mixed with a
  base prompt (Regional Prompter, attention couple);
* ``"guidance"`` layout guidance by gradient (Chen et al. 2024 backward guidance): the latents move down the
  gradient of each phrase's attention mass outside its box, on the shared guidance machinery.

Any mode can drop the end-of-text and padding keys (``mask_special``), inside the boxes or everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..composer import RegionConstrainedCrossAttention, TokenRegion, box_cells
from ..composer.rca import RowSelector
from ..core import AttentionCall, AttentionControl
from .bias import AttentionBiasLayout
from .couple import RegionalPrompts
from .masks import Box

MODES = ("forbid", "bias", "prompts", "guidance")
SPECIAL_MASKS = ("off", "boxes", "all")


@dataclass(frozen=True)
class LayoutSettings:
    """What the regional control does; :meth:`check` validates every field against the regions.

    Args:
        mode: one of :data:`MODES`.
        strength: ``bias`` mode, eDiff-I's w; ``guidance`` mode, the step size eta (>= 0).
        until: ``bias`` and ``guidance`` modes, the fraction of the steps (from the first) that get the bias or
            the latent updates, in (0, 1].
        mask_special: drop the end-of-text and padding keys: ``"off"``, ``"boxes"`` (queries inside any box)
            or ``"all"``; with ``forbid`` and ``bias`` modes.
        base_ratio: ``prompts`` mode, the base prompt's share inside the boxes, in [0, 1].
        region_weights: ``prompts`` mode, one positive weight per region (default 1 each).
        region_prompts: ``prompts`` mode, one prompt per region (default: each region's phrase).
        base_prompt: ``prompts`` mode, the prompt for the whole image (default: ``prompt``).
    """

    mode: str = "forbid"
    strength: float = 1.0
    until: float = 1.0
    mask_special: str = "off"
    base_ratio: float = 0.2
    region_weights: Sequence[float] | None = None
    region_prompts: Sequence[str] | None = None
    base_prompt: str | None = None

    def check(self, num_regions: int) -> None:
        if self.mode not in MODES:
            raise ValueError(f"layout_mode={self.mode!r} is not one of {MODES}")
        if self.mask_special not in SPECIAL_MASKS:
            raise ValueError(f"mask_special={self.mask_special!r} is not one of {SPECIAL_MASKS}")
        if self.mode in ("prompts", "guidance") and self.mask_special != "off":
            raise ValueError(f"mask_special={self.mask_special!r} works with layout_mode 'forbid' and 'bias', "
                             f"not {self.mode!r}")
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"layout_strength={self.strength!r} must be a finite number >= 0")
        if not 0 < self.until <= 1:
            raise ValueError(f"layout_until={self.until!r} must be in (0, 1] (a fraction of the steps)")
        if not 0 <= self.base_ratio <= 1:
            raise ValueError(f"base_ratio={self.base_ratio!r} must be in [0, 1]")
        for name in ("region_weights", "region_prompts"):
            value = getattr(self, name)
            if value is not None and len(value) != num_regions:
                raise ValueError(f"{name} has {len(value)} entries for {num_regions} regions; give one per region")
        if self.region_weights is not None and not all(math.isfinite(w) and w > 0 for w in self.region_weights):
            raise ValueError(f"region_weights={list(self.region_weights)} must all be finite and > 0")
        if self.region_prompts is not None and not all(isinstance(p, str) and p.strip()
                                                       for p in self.region_prompts):
            raise ValueError(f"region_prompts={list(self.region_prompts)} must be non-empty strings")


def noise_level(scheduler) -> Callable[[AttentionCall], float]:
    """``call -> sigma`` of the step in progress, from the scheduler (eDiff-I's sigma, the VE noise level).

    VP schedulers (``alphas_cumprod``): ``sigma = sqrt((1 - abar_t) / abar_t)``. Flow matching
    (``x_t = (1 - s) x_0 + s eps``, timesteps ``1000 s``): ``sigma = s / (1 - s)``.
    """
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None:
        def vp(call: AttentionCall) -> float:
            index = min(max(int(round(call.run.timestep)), 0), len(alphas) - 1)
            abar = float(alphas[index])
            return math.sqrt((1 - abar) / abar)

        return vp
    if "FlowMatch" in type(scheduler).__name__:
        total = scheduler.config.num_train_timesteps

        def flow(call: AttentionCall) -> float:
            s = min(call.run.timestep / total, 1 - 1e-6)
            return s / (1 - s)

        return flow
    raise ValueError(f"layout_mode='bias' needs the noise level; scheduler {type(scheduler).__name__} has neither "
                     "alphas_cumprod nor flow-matching timesteps")


def special_positions(pipe, call: Mapping[str, Any]) -> list[int]:
    """Text-key positions that hold neither a start token nor a word of the prompt: the end-of-text and padding
    keys of every text encoder the attention layers read (SD3: in its CLIP rows and in its T5 rows).

    Found with the family's own token layout (``pipe.family_text``); every prompt of a batch must give the same.
    """
    text = pipe.family_text
    prompt = call.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if not prompts:
        raise ValueError("mask_special needs the prompt text to find its end and padding keys; got no prompt")
    length, found = text.key_length(pipe, call), []
    for index, text_prompt in enumerate(prompts):
        try:
            words = set(text.word_positions(pipe, text_prompt, text_prompt, f"prompt[{index}]", call))
        except ValueError:
            raise ValueError(f"mask_special: prompt {text_prompt!r} does not fit in the {length} text keys; "
                             "shorten it or leave mask_special='off'") from None
        found.append([j for j in range(text.offset, length) if j not in words])
    if any(positions != found[0] for positions in found):
        raise ValueError("mask_special: the prompts of a batch end at different token positions; give one prompt "
                         "per call (or prompts of equal token length)")
    return found[0]


def layout_controls(
    pipe,
    settings: LayoutSettings,
    call: Mapping[str, Any],
    boxes: Sequence[Box],
    tokens: Sequence[Sequence[int]],
    rows: RowSelector,
    region_encodings: torch.Tensor | None = None,
) -> list[AttentionControl]:
    """The controls for one pipeline call (``call``: its arguments); empty when there are no regions, so the
    stock pipeline runs."""
    if not boxes or settings.mode == "guidance":  # guidance moves the latents: see layout_guidance
        return []
    if settings.mode == "prompts":
        weights = settings.region_weights or [1.0] * len(boxes)
        return [RegionalPrompts(boxes, region_encodings, settings.base_ratio, weights, rows)]
    special = special_positions(pipe, call) if settings.mask_special != "off" else []
    if settings.mode == "forbid":
        regions = [TokenRegion(tuple(t), lambda grid, box=box: box_cells(box, grid)) for t, box in zip(tokens, boxes)]
        controls: list[AttentionControl] = [
            RegionConstrainedCrossAttention(regions, rows, first_token=pipe.family_text.offset)]
        if special:  # the bias control with strength 0 is the end/padding mask alone
            controls.append(AttentionBiasLayout(boxes, tokens, 0.0, lambda call: 0.0, 0, special,
                                                settings.mask_special, rows))
        return controls
    active = math.ceil(settings.until * call["num_inference_steps"])
    return [AttentionBiasLayout(boxes, tokens, settings.strength, noise_level(pipe.scheduler), active, special,
                                settings.mask_special, rows)]


def layout_guidance(pipe, settings: LayoutSettings, call: Mapping[str, Any], boxes: Sequence[Box],
                    tokens: Sequence[Sequence[int]]) -> tuple[Callable, Any] | None:
    """``guidance`` mode: (loss, schedule) for the shared guidance machinery (:mod:`attnctl.guidance`, the one
    Attend-and-Excite uses): :class:`~attnctl.layout.guidance.BoxMassLoss` and Chen et al.'s ``eta sigma_t^2``
    steps. ``None`` in the other modes and when guidance is off (no regions, strength 0)."""
    if settings.mode != "guidance" or not boxes or settings.strength == 0:
        return None
    alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
    if alphas is None or not hasattr(pipe, "unet"):
        raise ValueError(f"layout_mode='guidance' runs on UNet pipelines with a VP scheduler (SD 1.x/2.x, SDXL); "
                         f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} is not one")
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    from .guidance import BoxMassLoss, layout_schedule

    timesteps, _ = retrieve_timesteps(pipe.scheduler, call["num_inference_steps"], "cpu", call.get("timesteps"),
                                      call.get("sigmas"))
    return BoxMassLoss(boxes, tokens), layout_schedule(settings.strength, settings.until, alphas, timesteps.tolist())
