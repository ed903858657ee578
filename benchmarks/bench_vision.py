"""Time and peak memory of the attnctl.vision modules vs full attention as the token grid grows, in one run.

Every (module, grid) case runs in a fresh child process, so its peak resident memory (VmHWM, reset just before
the forward pass) is its own and no allocator cache carries over. Peak memory is the high-water mark above the
resident size with the module and input in place. Cases whose dense (N x N) float32 logits would exceed
``--memory-budget`` GiB are skipped and reported as such.

Time is the best of a few forward passes, as wall-clock and as process CPU time (both threads summed); on a
machine shared with other jobs the CPU time is the steadier of the two. Children run with
``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads sleep instead of spinning on the CPU clock.

    nice -n 10 python benchmarks/bench_vision.py [--grids 56 112 168 224] [--dim 64] [--heads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from attnctl.vision.biformer import BiLevelRoutingAttention
from attnctl.vision.convit import GatedPositionalSelfAttention
from attnctl.vision.grid import FullGridAttention, naive_attention, split_heads
from attnctl.vision.halo import HaloAttention2d
from attnctl.vision.hilo import HiLoAttention
from attnctl.vision.neighborhood import NeighborhoodAttention2d, cls_window_attention


class MaterialisedFullAttention(FullGridAttention):
    """Full attention with explicit (N x N) probabilities: what an eager ViT layer does."""

    def attend(self, query, key, value, grid):
        return naive_attention(query, key, value)


class ClsWindowAttention(FullGridAttention):
    """A ViT layer under :func:`attnctl.vision.patches.windowed_attention`: CLS token plus patch grid."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int]) -> None:
        super().__init__(dim, heads)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        tokens = torch.cat([x.new_zeros(batch, 1, dim), x.reshape(batch, height * width, dim)], dim=1)
        query, key, value = (split_heads(t, self.num_heads) for t in self.qkv(tokens).chunk(3, dim=-1))
        out = cls_window_attention(query, key, value, (height, width), self.window)
        return self.proj(out.transpose(1, 2).reshape(batch, 1 + height * width, dim))


def _dense_bytes(grid: int, heads: int) -> float:
    return 4.0 * heads * grid**4  # one float32 (heads, N, N) tensor


# name -> (builder(dim, heads), how many dense (heads, N, N) float32 tensors it materialises)
CASES: dict[str, tuple[Callable[[int, int], nn.Module], float]] = {
    "full attention (fused SDPA)": (lambda d, h: FullGridAttention(d, h), 0),
    "full attention (materialised)": (lambda d, h: MaterialisedFullAttention(d, h), 3),
    "neighbourhood (7x7)": (lambda d, h: NeighborhoodAttention2d(d, h, kernel_size=7), 0),
    "ViT windowed patch (CLS + 14x14 window)": (lambda d, h: ClsWindowAttention(d, h, (14, 14)), 0),
    "halo (block 8, halo 3)": (lambda d, h: HaloAttention2d(d, h, block_size=8, halo_size=3), 0),
    "HiLo (window 2, alpha 0.5)": (lambda d, h: HiLoAttention(d, h, window_size=2, alpha=0.5), 0),
    "BiFormer (7x7 regions, top-4)": (  # LCE kernel 3, as recorded in BENCHMARKS.md (the default is now 5)
        lambda d, h: BiLevelRoutingAttention(d, h, regions_per_side=7, topk=4, lce_kernel=3),
        0,
    ),
    "ConViT GPSA": (lambda d, h: GatedPositionalSelfAttention(d, h), 6),
}


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _timed(module: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    module(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_case(name: str, grid: int, dim: int, heads: int, repeats: int) -> dict[str, float]:
    """Child process: one forward measures peak memory (and warms up), then ``repeats`` timed forwards."""
    torch.manual_seed(0)
    module = CASES[name][0](dim, heads).eval()
    x = torch.randn(1, grid, grid, dim)
    with torch.inference_mode():
        base = _memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the VmHWM high-water mark
        times = [_timed(module, x)]
        peak = _memory_kib("VmHWM") - base
        times = [_timed(module, x) for _ in range(repeats)] or times
    return {"wall": min(t[0] for t in times), "cpu": min(t[1] for t in times), "peak_mib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[56, 112, 168, 224], help="token grid sides")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--memory-budget", type=float, default=6.0, help="GiB of dense logits allowed per case"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case is not None:  # child mode
        repeats = 2 if args.grids[0] <= 112 else 1
        print(json.dumps(run_case(args.case, args.grids[0], args.dim, args.heads, repeats)))
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; batch 1, dim {args.dim}, "
        f"{args.heads} heads, float32, inference; load average at start {os.getloadavg()[0]:.1f}"
    )
    results: dict[tuple[str, int], dict[str, float] | None] = {}
    for grid in args.grids:
        for name, (_, dense_tensors) in CASES.items():
            if dense_tensors * _dense_bytes(grid, args.heads) > args.memory_budget * 2**30:
                results[name, grid] = None
                continue
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    name,
                    "--grids",
                    str(grid),
                    "--dim",
                    str(args.dim),
                    "--heads",
                    str(args.heads),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
            )
            results[name, grid] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"  {name} @ {grid}x{grid}: {results[name, grid]}", file=sys.stderr)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(format_table(results, args.grids))


def format_table(results: dict[tuple[str, int], dict[str, float] | None], grids: list[int]) -> str:
    """Markdown table: CPU time (ratio to fused full attention) / wall time / peak memory per grid."""
    header = " | ".join(f"{g}x{g} ({g * g} tokens)" for g in grids)
    lines = [
        "cells: CPU ms (ratio to fused full attention) / wall ms / peak MiB above the inputs",
        f"| module | {header} |",
        "|---|" + "---|" * len(grids),
    ]
    for name in CASES:
        cells = []
        for grid in grids:
            result, full = results[name, grid], results["full attention (fused SDPA)", grid]
            if result is None:
                cells.append("skipped: dense logits over budget")
            else:
                cells.append(
                    f"{result['cpu'] * 1e3:.0f} ({result['cpu'] / full['cpu']:.2f}x) / "
                    f"{result['wall'] * 1e3:.0f} / {result['peak_mib']:.0f}"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
