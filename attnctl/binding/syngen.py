"""SynGen's loss (Rassin et al., NeurIPS 2023): align each modifier's attention with its noun's, apart from the rest.

Each token's map is normalised over the pixels into a distribution P_i (``SG/compute_loss.py:36-50``; the
release's x100 cancels) and maps are compared with the symmetric KL divergence
``dist(P, Q) = (KL(P||Q) + KL(Q||P)) / 2``. For a modifier set S with noun n and modifiers m_1..m_k, and U(S)
the prompt's other tokens (Eq. 2-4):

    L_S = sum_j dist(m_j, n) - sum_j 1/2 (mean_{u in U} dist(m_j, u) + mean_{u in U} dist(n, u))

L is the sum over the prompt's sets. A word the tokenizer splits is compared piece by piece and the largest
distance counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Word = tuple[int, ...]  # token indices of one word (BOS at 0)


@dataclass(frozen=True)
class ModifierIndices:
    """One modifier set as token indices: the noun, its modifiers and U(S), the other prompt tokens."""

    noun: Word
    modifiers: tuple[Word, ...]
    unrelated: tuple[int, ...]


def spatial_distributions(maps: torch.Tensor, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, log P) of maps (tokens, h, w): each map divided by its sum, logs of probabilities clamped to [eps, 1-eps].

    The clamp is ``torch.distributions``' (eps = the dtype's machine epsilon), which the release relies on.
    A map with no attention at all (T5's masked padding keys) stays zero instead of 0/0, whose NaN would
    reach the gradient of every other map through the backward of the division.
    """
    flat = maps.flatten(1)
    probs = flat / flat.sum(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    eps = torch.finfo(probs.dtype).eps if eps is None else eps
    return probs, probs.clamp(eps, 1 - eps).log()


def symmetric_kl(p: torch.Tensor, log_p: torch.Tensor, q: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """0.5 * (KL(P||Q) + KL(Q||P)) = 0.5 * sum_x (P(x) - Q(x)) (log P(x) - log Q(x)), over the last axis."""
    return 0.5 * ((p - q) * (log_p - log_q)).sum(-1)


@dataclass(frozen=True)
class SynGenLoss:
    """Callable loss for :class:`~attnctl.guidance.LatentGuide`: maps (rows, tokens, h, w) -> (rows,)."""

    sets: Sequence[Sequence[ModifierIndices]]

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        if len(self.sets) != maps.shape[0]:
            raise ValueError(f"{len(self.sets)} rows of modifier sets for {maps.shape[0]} rows of attention maps")
        return torch.stack([row_loss(maps[row], sets) for row, sets in enumerate(self.sets)])


def row_loss(maps: torch.Tensor, sets: Sequence[ModifierIndices]) -> torch.Tensor:
    """SynGen's loss of one image: maps (tokens, h, w) -> scalar; 0 without sets."""
    if not sets:
        return maps.new_zeros(())
    probs, logs = spatial_distributions(maps)  # (tokens, h*w)

    def dist(a: Word, b: Word) -> torch.Tensor:  # the largest distance over the words' token pairs
        return torch.stack([symmetric_kl(probs[i], logs[i], probs[j], logs[j]) for i in a for j in b]).max()

    def repulsion(word: Word, unrelated: tuple[int, ...]) -> torch.Tensor:
        if not unrelated:
            return maps.new_zeros(())
        return torch.stack([dist(word, (u,)) for u in unrelated]).mean()

    total = maps.new_zeros(())
    for s in sets:
        for modifier in s.modifiers:
            total = total + dist(modifier, s.noun)
            total = total - 0.5 * (repulsion(modifier, s.unrelated) + repulsion(s.noun, s.unrelated))
    return total
