"""Layout control: objects in their boxes, as modes of one regional control (see ``docs/layout.md``)."""

from .bias import AttentionBiasLayout, ediffi_bias, paint_matrix
from .build import (
    MODES,
    SPECIAL_MASKS,
    LayoutSettings,
    layout_controls,
    layout_guidance,
    noise_level,
    special_positions,
)
from .couple import RegionalPrompts, couple_weights
from .guidance import BoxMassLoss, box_mass_loss, boxdiff_loss, latent_step, layout_schedule, phrase_maps
from .masks import region_masks, special_keep_mask

__all__ = [
    "MODES",
    "SPECIAL_MASKS",
    "AttentionBiasLayout",
    "BoxMassLoss",
    "LayoutSettings",
    "RegionalPrompts",
    "box_mass_loss",
    "boxdiff_loss",
    "couple_weights",
    "ediffi_bias",
    "latent_step",
    "layout_controls",
    "layout_guidance",
    "layout_schedule",
    "noise_level",
    "paint_matrix",
    "phrase_maps",
    "region_masks",
    "special_keep_mask",
    "special_positions",
]
