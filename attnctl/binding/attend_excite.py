"""Attend-and-Excite's loss (Chefer et al., SIGGRAPH 2023): excite the most neglected subject token.

Per image the maps are renormalised over the text tokens (start token left out), each subject's map is
smoothed with the release's Gaussian kernel, and the loss is ``max_s max(0, 1 - max_x A_s(x))`` (Eq. 4): only
the subject whose strongest pixel is weakest receives a gradient. A subject may span several tokens (a word
the tokenizer splits): its map is the sum of its tokens' renormalised maps, the share of attention the word
gets at each pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..guidance.maps import gaussian_kernel, smooth, token_softmax

Subject = tuple[int, ...]  # the text-key positions of one subject's tokens (CLIP: BOS at 0; T5: none)

#: The release's columns of the token softmax for CLIP prompts: after the start token, before the last key.
RELEASE_KEYS = (1, -1)

#: The release's thresholds: loop index -> minimum attention every subject must reach (refinement).
DEFAULT_THRESHOLDS = {0: 0.05, 10: 0.5, 20: 0.8}


@dataclass(frozen=True)
class AttendExciteLoss:
    """Callable loss for :class:`~attnctl.guidance.LatentGuide`: maps (rows, tokens, h, w) -> (rows,).

    Args:
        subjects: per row (image), its subjects; a row without subjects has loss 0.
        smooth_attentions, sigma, kernel_size: the Gaussian smoothing (release: on, 0.5, 3).
        temperature: the factor before the token softmax (release: 100).
        keys: per row, the [first, end) text-key columns the softmax renormalises over; ``None``: the
            release's :data:`RELEASE_KEYS` for every row (T5 prompts: their unmasked keys, from 0).
    """

    subjects: Sequence[Sequence[Subject]]
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    temperature: float = 100.0
    keys: Sequence[tuple[int, int]] | None = None

    def subject_peaks(self, maps: torch.Tensor, row: int) -> torch.Tensor:
        """(subjects,): max over pixels of each subject's (smoothed) renormalised map in ``row``."""
        first, end = RELEASE_KEYS if self.keys is None else self.keys[row]
        probs = token_softmax(maps[row : row + 1], first, self.temperature, end)[0]  # (tokens, h, w)
        subject_maps = torch.stack([probs[list(s)].sum(0) for s in self.subjects[row]])  # (subjects, h, w)
        if self.smooth_attentions:
            subject_maps = smooth(subject_maps, gaussian_kernel(self.kernel_size, self.sigma))
        return subject_maps.flatten(1).max(dim=1).values

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        if len(self.subjects) != maps.shape[0]:
            raise ValueError(f"{len(self.subjects)} rows of subjects for {maps.shape[0]} rows of attention maps")
        losses = [
            (1 - self.subject_peaks(maps, row)).clamp_min(0).max() if subjects else maps.new_zeros(())
            for row, subjects in enumerate(self.subjects)
        ]
        return torch.stack(losses)
