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
            loss = token_loss(model(input_ids=inputs).logits, targets)
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
        batch_targets = targets[start : start + batch_size]
        predictions = model(input_ids=inputs[start : start + batch_size]).logits.argmax(-1)
        scored = batch_targets != IGNORE_INDEX
        correct += (predictions[scored] == batch_targets[scored]).sum().item()
        total += scored.sum().item()
    if total == 0:
        raise ValueError("targets has no position to score (all are -100)")
    return correct / total
