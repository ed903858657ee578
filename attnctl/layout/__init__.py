"""Layout control: objects in their boxes, as modes of one regional control (see ``docs/layout.md``)."""

from .bias import AttentionBiasLayout, ediffi_bias, paint_matrix
from .build import MODES, SPECIAL_MASKS, LayoutSettings, layout_controls, noise_level
from .couple import RegionalPrompts, couple_weights
from .guidance import box_mass_loss, boxdiff_loss, latent_step, phrase_maps
from .masks import end_and_padding_tokens, region_masks, special_keep_mask

__all__ = [
    "MODES",
    "SPECIAL_MASKS",
    "AttentionBiasLayout",
    "LayoutSettings",
    "RegionalPrompts",
    "box_mass_loss",
    "boxdiff_loss",
    "couple_weights",
    "ediffi_bias",
    "end_and_padding_tokens",
    "latent_step",
    "layout_controls",
    "noise_level",
    "paint_matrix",
    "phrase_maps",
    "region_masks",
    "special_keep_mask",
]
