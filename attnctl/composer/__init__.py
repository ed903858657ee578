"""PrimeComposer (Wang et al., ACM MM 2024): region-constrained composition on attnctl's controlled attention.

Modules, one job each: :mod:`.config` (settings and step schedule), :mod:`.geometry` (masks and boxes on every token
grid), :mod:`.preprocess` (input checks, subject canvas, pixel paste), :mod:`.tokens` (subject token positions),
:mod:`.rca` (region-constrained cross-attention), :mod:`.injection` (correlation recording and injection),
:mod:`.solver` (DPM-Solver++ sampling and inversion), :mod:`.sampler` (the progressively combined loop).
"""

from .config import (
    ComposerConfig,
    Phases,
    fraction_steps,
    paper_phases,
    phases_for,
    release_phases,
    release_threshold,
)
from .geometry import (
    GridLayout,
    PixelBox,
    Placement,
    box_cells,
    check_box,
    mask_bbox,
    sample_mask,
    unet_grids,
)
from .injection import (
    CORRELATION,
    GENERATOR,
    CorrelationMaps,
    CorrelationRecorder,
    SubjectInjection,
    correlation_cells,
    inject_logits,
    inject_logits_,
)
from .preprocess import (
    PreparedInputs,
    check_same_size,
    paste_in_pixels,
    prepare,
    target_box_from,
    to_bool_mask,
    to_rgb_image,
    working_size,
)
from .rca import RegionConstrainedCrossAttention, TokenRegion, all_rows, conditional_half, rca_keep_mask
from .sampler import CompositionModel, Trajectories, compose, initial_latents, keep_box, paste_cells
from .solver import DiscreteVPSchedule, data_from_output, dpm_update, integrate, invert, sample, update_order
from .tokens import check_token_indices, phrase_token_indices, words_token_indices

__all__ = [
    "CORRELATION",
    "GENERATOR",
    "ComposerConfig",
    "CompositionModel",
    "CorrelationMaps",
    "CorrelationRecorder",
    "DiscreteVPSchedule",
    "GridLayout",
    "Phases",
    "PixelBox",
    "Placement",
    "PreparedInputs",
    "RegionConstrainedCrossAttention",
    "SubjectInjection",
    "TokenRegion",
    "Trajectories",
    "all_rows",
    "box_cells",
    "check_box",
    "check_same_size",
    "check_token_indices",
    "compose",
    "conditional_half",
    "correlation_cells",
    "data_from_output",
    "dpm_update",
    "fraction_steps",
    "initial_latents",
    "inject_logits",
    "inject_logits_",
    "integrate",
    "invert",
    "keep_box",
    "mask_bbox",
    "paper_phases",
    "paste_cells",
    "paste_in_pixels",
    "phases_for",
    "phrase_token_indices",
    "prepare",
    "rca_keep_mask",
    "release_phases",
    "release_threshold",
    "sample",
    "sample_mask",
    "target_box_from",
    "to_bool_mask",
    "to_rgb_image",
    "unet_grids",
    "update_order",
    "words_token_indices",
    "working_size",
]
