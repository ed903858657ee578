"""A minimal CPU training loop for the tiny models of the demos and the MQAR harness.

Targets are aligned with inputs (``targets[:, i]`` is what position i should predict, -100 to ignore), so
the same loop serves next-token text (targets = inputs shifted by one) and MQAR (targets only at queries).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not -100; logits (batch, tokens, vocab)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def scored_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A causal LM's logits at the scored positions only: (scored, vocab) and their (scored,) targets.

    Runs the decoder over the whole batch and the output head only where ``targets`` is not -100: what the
    full logits give at those positions for models whose logits are the head applied to the decoder's last
    hidden state (every family of :mod:`.tiny`), without a
    (batch, tokens, vocab) tensor, which dominates the cost of sparse targets such as MQAR's with a large
    vocabulary.
    """
    hidden = model.get_decoder()(input_ids=inputs).last_hidden_state  # (batch, tokens, hidden)
    scored = targets != IGNORE_INDEX
    return model.get_output_embeddings()(hidden[scored]), targets[scored]


def next_token_targets(inputs: torch.Tensor) -> torch.Tensor:
    """Targets for language modelling: each position predicts the next token; the last one is ignored."""
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, :-1] = inputs[:, 1:]
    return targets


def train(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    parameters: Iterable[nn.Parameter],
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> list[float]:
    """AdamW on ``parameters`` over ``(inputs, targets)`` batches; returns the loss of every step.

    The model trains in ``train()`` mode and is put back in ``eval()`` mode afterwards.
    """
    optimizer = torch.optim.AdamW(list(parameters), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    try:
        for inputs, targets in batches:
            logits, scored_targets = scored_logits(model, inputs, targets)
            loss = F.cross_entropy(logits.float(), scored_targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.eval()
    return losses


@torch.no_grad()
def recall_accuracy(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256
) -> float:
    """Share of the non-ignored positions where the model's top prediction equals the target."""
    correct = total = 0
    for start in range(0, inputs.shape[0], batch_size):
        logits, scored_targets = scored_logits(
            model, inputs[start : start + batch_size], targets[start : start + batch_size]
        )
        correct += (logits.argmax(-1) == scored_targets).sum().item()
        total += scored_targets.numel()
    if total == 0:
        raise ValueError("targets has no position to score (all are -100)")
    return correct / total
