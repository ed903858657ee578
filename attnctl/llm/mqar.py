"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology", Sec. 3) and a CPU evaluation harness.

An MQAR sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; later, each key appears
once more as a query, and the model must output its value right there. Query positions are drawn with
Zoology's power law (gap i has weight ``i ** (power_a - 1)``), so most queries come soon after the context and
some much later; every other position holds a random filler token. Keys come from the lower half of the
vocabulary and values from the upper half. The generator and its checks follow Zoology's ``multiquery_ar``
(``vocab_size > seq_len``, even ``seq_len``, ``4 * num_kv_pairs <= seq_len``) and so do the defaults
(vocabulary 8192, 8 key-value pairs, ``power_a=0.01``): with a small vocabulary the filler repeats the context
keys and makes the task harder than Zoology's.

:func:`run_mqar` trains a tiny Llama of one attention variant from scratch on CPU and reports recall accuracy
on held-out sequences; ``benchmarks/bench_llm_mqar.py`` sweeps it over sequence lengths and widths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .gating import add_output_gates
from .hybrid import apply_hybrid_attention
from .sliding_window import apply_sliding_window
from .tiny import build_tiny_causal_lm
from .training import IGNORE_INDEX, recall_accuracy, train

MQAR_VARIANTS = ("attention", "gated-headwise", "gated-elementwise", "sliding-window", "hybrid")


@dataclass
class MqarData:
    """``inputs`` (examples, seq_len) token ids; ``targets`` the value due at each query, -100 elsewhere."""

    inputs: torch.Tensor
    targets: torch.Tensor


ZOOLOGY_VOCAB_SIZE = 8192
ZOOLOGY_NUM_KV_PAIRS = 8


def _check_mqar(seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float) -> None:
    """Zoology's constraints on an MQAR setting, as ValueErrors naming the argument."""
    if seq_len % 2:
        raise ValueError(f"seq_len={seq_len} must be even (key-value and query slots come in pairs)")
    if num_kv_pairs < 1 or 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"seq_len={seq_len} leaves room for {max(seq_len // 2 - num_kv_pairs, 0)} queries after "
            f"num_kv_pairs={num_kv_pairs} pairs; use num_kv_pairs >= 1 and seq_len >= {4 * max(num_kv_pairs, 1)}"
        )
    if vocab_size <= seq_len:
        raise ValueError(
            f"vocab_size={vocab_size} must exceed seq_len={seq_len} (as in Zoology; a small vocabulary makes "
            f"the filler repeat the keys); Zoology's default is {ZOOLOGY_VOCAB_SIZE}"
        )
    if not 0 < power_a <= 1:
        raise ValueError(f"power_a={power_a} must be in (0, 1] (1 = uniform query positions)")


def make_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int = ZOOLOGY_NUM_KV_PAIRS,
    vocab_size: int = ZOOLOGY_VOCAB_SIZE,
    power_a: float = 0.01,
    seed: int = 0,
) -> MqarData:
    """Generate MQAR sequences (see the module docstring); deterministic for a given ``seed``."""
    _check_mqar(seq_len, num_kv_pairs, vocab_size, power_a)
    space = (seq_len - 2 * num_kv_pairs) // 2  # query slots: every other position after the context
    generator = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    keys = torch.rand(num_examples, half - 1, generator=generator).argsort(-1)[:, :num_kv_pairs] + 1
    values = (
        torch.rand(num_examples, vocab_size - half, generator=generator).argsort(-1)[:, :num_kv_pairs] + half
    )
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial(weights.expand(num_examples, space), num_kv_pairs, generator=generator)

    inputs = torch.randint(0, vocab_size, (num_examples, seq_len), generator=generator)
    inputs[:, 0 : 2 * num_kv_pairs : 2] = keys
    inputs[:, 1 : 2 * num_kv_pairs : 2] = values
    query_positions = 2 * num_kv_pairs + 2 * gaps  # (examples, pairs)
    inputs.scatter_(1, query_positions, keys)
    targets = torch.full_like(inputs, IGNORE_INDEX).scatter_(1, query_positions, values)
    return MqarData(inputs, targets)


@dataclass
class MqarResult:
    """One trained model's recall accuracy on held-out sequences, with its setting and cost."""

    variant: str
    seq_len: int
    width: int
    accuracy: float
    final_loss: float
    seconds: float


def _check_variant(variant: str) -> None:
    if variant not in MQAR_VARIANTS:
        raise ValueError(f"variant={variant!r} is not an MQAR variant; choose one of {MQAR_VARIANTS}")


def apply_variant(model, variant: str, window: int, sinks: int):
    """Turn a stock tiny Llama into ``variant``; returns the patch (None for plain attention)."""
    _check_variant(variant)
    if variant.startswith("gated-"):
        return add_output_gates(model, variant.removeprefix("gated-"), identity_init=False, bias=False)
    if variant == "sliding-window":
        return apply_sliding_window(model, window, sinks)
    if variant == "hybrid":
        return apply_hybrid_attention(model, window, sinks)
    return None


def run_mqar(
    variant: str,
    seq_len: int,
    width: int,
    num_kv_pairs: int = ZOOLOGY_NUM_KV_PAIRS,
    vocab_size: int = ZOOLOGY_VOCAB_SIZE,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 3e-3,
    window: int = 16,
    sinks: int = 2,
    num_layers: int = 2,
    num_heads: int = 2,
    train_examples: int = 8192,
    test_examples: int = 512,
    seed: int = 0,
) -> MqarResult:
    """Train a ``num_layers``-layer Llama, hidden size ``width``, ``variant`` attention, on MQAR; test it.

    All parameters train from scratch (gates: the paper's bias-free form, random init; hybrid: its linear
    branch weight starts at 0 and trains); windows hold ``window`` tokens plus ``sinks`` sink tokens. The
    data follow Zoology's defaults (see the module docstring). Accuracy is the share of held-out queries
    whose top prediction is the right value.
    """
    _check_variant(variant)  # before the data: generating Zoology-sized sets takes seconds
    started = time.perf_counter()
    train_set = make_mqar(train_examples, seq_len, num_kv_pairs, vocab_size, seed=seed)
    test_set = make_mqar(test_examples, seq_len, num_kv_pairs, vocab_size, seed=seed + 10_000)
    model = build_tiny_causal_lm(
        "llama",
        hidden_size=width,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        vocab_size=vocab_size,
        max_positions=max(seq_len, 64),
        seed=seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # new parameters (the gates) start from the seed, not the global state
        patch = apply_variant(model, variant, window, sinks)
    generator = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(steps):
            rows = torch.randint(0, train_examples, (batch_size,), generator=generator)
            yield train_set.inputs[rows], train_set.targets[rows]

    try:
        losses = train(model, batches(), model.parameters(), lr=lr, weight_decay=0.1)
        accuracy = recall_accuracy(model, test_set.inputs, test_set.targets)
    finally:
        if patch is not None:
            patch.restore()
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    return MqarResult(variant, seq_len, width, accuracy, final_loss, time.perf_counter() - started)
