"""Time and peak memory of inward-window attention vs full, masked and flex attention, side by side in one run.

Cases (issue #3): token grids frames x height x width = 8x32x32, 8x64x64 (and 8x96x96), window 8x15x15 (all
frames, 15 x 15 tokens), batch 1, 2 heads, head dim 64, float32, on CPU. Methods:

* ``cpu``: ``window_attention(..., backend="cpu")``, the fused CPU kernel (the default on CPU for these grids);
* ``tiled``: ``window_attention(..., backend="tiled")``, dense SDPA blocks over query tiles (``--tiles``);
* ``full``: ``F.scaled_dot_product_attention`` without a mask (what the window replaces);
* ``masked``: SDPA with the dense (N x N) boolean inward-window mask (the naive exact method);
* ``flex``: ``flex_attention`` compiled by Inductor with the analytic block mask (compile time reported apart).

Every (method, grid) case runs in a fresh child process so that its peak resident memory is its own: the
kernel's high-water mark (VmHWM, reset after a warm-up call) above the resident size with inputs in place.
Time is the best and median of ``--repeats`` calls after the warm-up (ratios of medians); CPU time (all threads,
best call) is reported too, as it is steadier than wall time on a machine shared with other jobs. Children run with
``OMP_WAIT_POLICY=PASSIVE`` so waiting OpenMP threads sleep instead of spinning.

    nice -n 10 python benchmarks/bench_freeswim_kernel.py [--grids 8x32x32 8x64x64 8x96x96] [--window 8x15x15]
        [--methods cpu tiled full masked flex] [--threads 2] [--repeats 3] [--tiles 8x8x1 8x4x2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WINDOW = (8, 15, 15)  # the default --window
METHODS = ("cpu", "tiled", "full", "masked", "flex")
MASK_BUDGET_GIB = 8.0  # the masked method needs N^2 bytes for its mask and SDPA a float copy (4 N^2 more)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(
    method: str, grid: tuple[int, ...], window: tuple[int, ...], repeats: int, tile: tuple[int, ...] | None = None
) -> dict:
    """Child process: time one method on one grid (``tiled``: with ``tile`` queries per tile, default
    :func:`~attnctl.core.window_attention.default_tile`) and measure its peak memory above the inputs."""
    import torch
    import torch.nn.functional as F

    from attnctl.core.window_attention import window_attention
    from attnctl.core.window_flex import flex_compile_error, window_block_mask
    from attnctl.core.windows import window_keep_mask

    generator = torch.Generator().manual_seed(0)
    shape = (1, 2, math.prod(grid), 64)
    query, key, value = (torch.randn(shape, generator=generator) for _ in range(3))
    setup = 0.0
    if method in ("cpu", "tiled"):
        def call():
            return window_attention(query, key, value, grid, window, backend=method, tile=tile)
    elif method == "full":
        def call():
            return F.scaled_dot_product_attention(query, key, value)
    elif method == "masked":
        start = time.perf_counter()
        mask = window_keep_mask(grid, window)
        setup = time.perf_counter() - start

        def call():
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    else:
        start = time.perf_counter()
        window_block_mask(grid, window, "cpu")
        setup = time.perf_counter() - start

        def call():
            return window_attention(query, key, value, grid, window, backend="flex")

    start = time.perf_counter()
    call()  # warm-up: plan, caches, and for flex the Inductor compilation
    warmup = time.perf_counter() - start
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = _rss_kib("VmRSS")
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    result = {
        "best_ms": min(walls) * 1e3,
        "median_ms": statistics.median(walls) * 1e3,
        "cpu_ms": min(cpus) * 1e3,
        "peak_mib": (_rss_kib("VmHWM") - before) / 1024,
        "warmup_s": warmup,
        "setup_s": setup,
    }
    if method == "flex" and flex_compile_error():
        result["note"] = "compile failed, eager"
    return result


def child(
    method: str, grid: tuple[int, ...], window: str, repeats: int, threads: int, tile: str | None = None
) -> dict:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, __file__, "--child", method, "x".join(map(str, grid)), "--window", window,
            "--repeats", str(repeats)]
    if tile is not None:
        args += ["--tiles", tile]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_grid(text: str) -> tuple[int, ...]:
    """``"8x32x32"`` -> (8, 32, 32): a grid or a tile shape."""
    return tuple(int(part) for part in text.split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["8x32x32", "8x64x64", "8x96x96"])
    parser.add_argument("--window", default="x".join(map(str, WINDOW)), help="one size per grid axis (default 8x15x15)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flex-max-tokens", type=int, default=32768, help="skip flex above this (compile time)")
    parser.add_argument("--full-max-tokens", type=int, default=73728)
    parser.add_argument(
        "--tiles", nargs="+", default=None, help="tiled: one row per tile shape, e.g. 8x8x1 8x4x2 (default: the default tile)"
    )
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "GRID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tile = parse_grid(args.tiles[0]) if args.tiles else None
        print(json.dumps(run_case(args.child[0], parse_grid(args.child[1]), parse_grid(args.window), args.repeats, tile)))
        return

    import torch

    window = parse_grid(args.window)
    print(f"# FreeSwim window-attention kernel, window {args.window}, batch 1, 2 heads, head dim 64; FLOP bound = "
          "tokens / window keys, the most a window method can gain over full attention")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| grid | tokens | method | best ms | median ms | CPU ms | peak MiB | vs full (median wall) | vs full (CPU) "
          "| FLOP bound | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for text in args.grids:
        grid = parse_grid(text)
        tokens = math.prod(grid)
        results = {}
        for method in args.methods:
            if method == "masked" and tokens**2 * 5 / 2**30 > MASK_BUDGET_GIB:
                results[method] = {"skip": f"mask needs {tokens**2 / 2**30:.1f} GiB"}
            elif method == "flex" and tokens > args.flex_max_tokens:
                results[method] = {"skip": "compile time"}
            elif method == "full" and tokens > args.full_max_tokens:
                results[method] = {"skip": "time"}
            elif method == "tiled" and args.tiles:
                for tile in args.tiles:
                    results[f"tiled {tile}"] = child(method, grid, args.window, args.repeats, args.threads, tile)
            else:
                results[method] = child(method, grid, args.window, args.repeats, args.threads)
        full = results.get("full", {})
        bound = f"{tokens / math.prod(window):.2f}x"
        for method, result in results.items():
            if "best_ms" not in result:
                print(f"| {text} | {tokens} | {method} | {result.get('skip') or result.get('error')} | | | | | | | |")
                continue
            wall = f"{full['median_ms'] / result['median_ms']:.2f}x" if "median_ms" in full else ""
            cpu = f"{full['cpu_ms'] / result['cpu_ms']:.2f}x" if "cpu_ms" in full else ""
            note = f" ({result['note']})" if "note" in result else ""
            print(
                f"| {text} | {tokens} | {method}{note} | {result['best_ms']:.1f} | {result['median_ms']:.1f} | "
                f"{result['cpu_ms']:.1f} | {result['peak_mib']:.1f} | {wall} | {cpu} | {bound} | {result['warmup_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
