"""MQAR recall accuracy of tiny models per attention variant, sequence length and width (CPU).

Trains one 2-layer Llama per (variant, sequence length, width) from scratch on multi-query associative recall
(Zoology) and prints a markdown table of held-out accuracy, plus the time each run took.

    nice -n 10 python benchmarks/bench_llm_mqar.py                       # 5 variants, T=64, d=64
    nice -n 10 python benchmarks/bench_llm_mqar.py --seq-lens 32 64 128 --widths 32 64
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import torch

from attnctl.llm.mqar import MQAR_VARIANTS, run_mqar


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=MQAR_VARIANTS, default=list(MQAR_VARIANTS))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[64])
    parser.add_argument("--widths", nargs="+", type=int, default=[64])
    parser.add_argument("--kv-pairs", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--window", type=int, default=16, help="sliding-window and hybrid window (tokens)")
    parser.add_argument("--sinks", type=int, default=2, help="attention-sink tokens of the windowed variants")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="cells show the mean (min-max) over seeds"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for tiny models)"
    )
    return parser.parse_args()


def _cell(values: list[float]) -> str:
    """Mean accuracy over seeds, with the range when there are several."""
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = list(itertools.product(args.seq_lens, args.widths))
    print(
        f"# MQAR: {args.kv_pairs} kv pairs, vocab {args.vocab_size}, "
        f"{args.steps} steps x batch {args.batch_size}, "
        f"lr {args.lr}, window {args.window} + {args.sinks} sinks, seeds {args.seeds}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    accuracy: dict[tuple[str, int, int], list[float]] = {}
    started = time.perf_counter()
    for variant, (seq_len, width), seed in itertools.product(args.variants, settings, args.seeds):
        result = run_mqar(
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
        accuracy.setdefault((variant, seq_len, width), []).append(result.accuracy)
        print(
            f"{variant:18s} seq {seq_len:4d} width {width:4d} seed {seed}: accuracy {result.accuracy:.3f}, "
            f"loss {result.final_loss:.3f}, {result.seconds:.0f} s",
            flush=True,
        )
    header = " | ".join(f"T={seq_len}, d={width}" for seq_len, width in settings)
    print(f"\n| variant | {header} |\n|---|{'---|' * len(settings)}")
    for variant in args.variants:
        cells = " | ".join(_cell(accuracy[variant, seq_len, width]) for seq_len, width in settings)
        print(f"| {variant} | {cells} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
