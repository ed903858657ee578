"""Time of the blocked causal sliding-window kernel against the dense masked reference and causal SDPA.

The blocked kernel should grow linearly with the sequence (each doubling about doubles its time), the dense
reference and full causal attention quadratically. The maximum deviation from the reference is printed too.

    nice -n 10 python benchmarks/bench_llm_window.py
    nice -n 10 python benchmarks/bench_llm_window.py --lengths 1024 2048 4096 8192 16384 --window 256
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from attnctl.llm.sliding_window import sliding_window_attention


def best_time(repeats: int, function, *args, **kwargs) -> float:
    """Fastest of ``repeats`` calls of ``function(*args, **kwargs)``, in milliseconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args, **kwargs)
        timings.append(time.perf_counter() - started)
    return 1e3 * min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument(
        "--reference-max", type=int, default=4096, help="skip the dense reference above this length"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# window {args.window} + {args.sinks} sinks, block {args.block}, "
        f"{args.heads} heads x {args.head_dim}, "
        f"float32, batch 1; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); best of {args.repeats}"
    )
    print(
        "| tokens | blocked window (ms) | dense masked reference (ms) | causal SDPA, full (ms) "
        "| max abs diff |"
    )
    print("|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for length in args.lengths:
        qkv = [torch.randn(1, args.heads, length, args.head_dim, generator=generator) for _ in range(3)]
        window = (args.window, args.sinks)
        blocked = best_time(args.repeats, sliding_window_attention, *qkv, *window, block=args.block)
        full = best_time(args.repeats, F.scaled_dot_product_attention, *qkv, is_causal=True)
        reference, difference = "-", "-"
        if length <= args.reference_max:
            reference = f"{best_time(args.repeats, sliding_window_attention, *qkv, *window, reference=True):.1f}"
            fast = sliding_window_attention(*qkv, *window, block=args.block)
            difference = (
                f"{(fast - sliding_window_attention(*qkv, *window, reference=True)).abs().max().item():.1e}"
            )
        print(f"| {length} | {blocked:.1f} | {reference} | {full:.1f} | {difference} |", flush=True)


if __name__ == "__main__":
    main()
