"""MQAR recall accuracy of tiny models per attention variant, over seeds, with 95% intervals (CPU).

Trains one 2-layer Llama per (variant, sequence length, width, seed) from scratch on multi-query associative
recall (Zoology's generator and constraints) and prints a markdown table: the mean held-out accuracy over
seeds with a 95% Student-t interval (the seed is the unit: data, initial weights and batches all follow
it), and each variant's paired difference from plain attention on the same seeds, with its 95% interval.
Runs go to ``--jobs`` worker processes, one torch thread each.

    nice -n 10 python benchmarks/bench_llm_mqar.py                              # the recorded setting
    nice -n 10 python benchmarks/bench_llm_mqar.py --seq-lens 64 --vocab-size 8192 --kv-pairs 8  # Zoology's
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from scipy import stats

from attnctl.llm.mqar import MQAR_VARIANTS, MqarResult, run_mqar


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=MQAR_VARIANTS, default=list(MQAR_VARIANTS))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[32])
    parser.add_argument("--widths", nargs="+", type=int, default=[64])
    parser.add_argument("--kv-pairs", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=64, help="must exceed every sequence length")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--window", type=int, default=8, help="sliding-window and hybrid window (tokens)")
    parser.add_argument("--sinks", type=int, default=2, help="attention-sink tokens of the windowed variants")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    return parser.parse_args()


def _run(job: tuple) -> MqarResult:
    torch.set_num_threads(1)
    variant, seq_len, width, seed, args = job
    return run_mqar(
        variant,
        seq_len,
        width,
        num_kv_pairs=args.kv_pairs,
        vocab_size=args.vocab_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        window=args.window,
        sinks=args.sinks,
        seed=seed,
    )


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of ``values`` (n - 1 degrees of freedom); the point for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _cell(values: list[float]) -> str:
    mean, low, high = t_interval(values)
    return f"{mean:.3f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    args = parse_args()
    settings = list(itertools.product(args.seq_lens, args.widths))
    print(
        f"# MQAR: {args.kv_pairs} kv pairs, vocab {args.vocab_size}, "
        f"{args.steps} steps x batch {args.batch_size}, lr {args.lr}, window {args.window} + {args.sinks} "
        f"sinks, seeds {args.seeds}, {args.jobs} jobs; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    jobs = [
        (variant, seq_len, width, seed, args)
        for seed, variant, (seq_len, width) in itertools.product(args.seeds, args.variants, settings)
    ]
    accuracy: dict[tuple[str, tuple[int, int]], dict[int, float]] = {}  # (variant, (T, d)) -> seed -> acc
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (variant, seq_len, width, seed, _), result in zip(jobs, pool.map(_run, jobs)):
            accuracy.setdefault((variant, (seq_len, width)), {})[seed] = result.accuracy
            print(
                f"{variant:18s} seq {seq_len:4d} width {width:4d} seed {seed}: accuracy {result.accuracy:.3f}, "
                f"loss {result.final_loss:.3f}, {result.seconds:.0f} s",
                flush=True,
            )
    header = " | ".join(f"T={seq_len}, d={width}" for seq_len, width in settings)
    print(f"\nmean accuracy [95% t-interval over {len(args.seeds)} seeds]")
    print(f"| variant | {header} |\n|---|{'---|' * len(settings)}")
    for variant in args.variants:
        cells = " | ".join(_cell(list(accuracy[variant, setting].values())) for setting in settings)
        print(f"| {variant} | {cells} |")
    if "attention" in args.variants:
        print("\npaired difference from attention, same seeds [95% t-interval]")
        print(f"| variant | {header} |\n|---|{'---|' * len(settings)}")
        for variant in args.variants:
            if variant == "attention":
                continue
            cells = " | ".join(
                _cell([accuracy[variant, s][seed] - accuracy["attention", s][seed] for seed in args.seeds])
                for s in settings
            )
            print(f"| {variant} | {cells} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    main()
