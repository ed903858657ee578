"""FreeSwim at its real sizes on one GPU: window kernels vs flash attention, stage-2 steps, cache memory.

A Wan 2.1 1.3B-shaped transformer (its published config: 30 blocks, 12 heads x 128, FFN 8960; random weights, nothing
downloaded), bf16, at FreeSwim's token grids 21 x 68 x 120 (81 frames at 1088 x 1920) and 21 x 34 x 60 (540p), window
31 x 53 tokens (the 480 x 832 native grid, made odd). Measured, each median of ``--repeats`` CUDA-event timings:

1. ``kernel``: the attention op alone, (1, 12, tokens, 128): each window backend (``flex`` compiled, ``natten`` where
   its GPU build is installed, ``tiled``) against flash SDPA over all tokens; the FLOP bound is tokens / window keys
   (the window's share of the keys), and ``of bound`` = speed-up / bound;
2. ``forward``: one transformer forward with the window on every self-attention (dual path off) per backend, against
   the stock forward with flash SDPA;
3. ``step``: one stage-2 denoising step with guidance (conditional pass dual or cached, unconditional windowed), averaged
   over ``--steps`` steps, for cache intervals 1, 2 and 5, and the peak GPU memory with the cache on the GPU and
   offloaded to pinned host memory (``cache_device="cpu"``).

Every backend's output is compared with the first one's (max abs difference reported). Rows land in ``--out`` as each
part ends, and a part that would start after ``--budget-s`` seconds is listed as skipped instead of run, so a lease
that runs short still returns what was measured. ``--dry-run`` runs the same code
on CPU with a 2-block toy transformer at a 3 x 8 x 12 grid in float32 (backends ``reference`` and ``tiled``), which the
test suite runs.

    python benchmarks/gpu_freeswim.py [--grids 21x34x60 21x68x120] [--repeats 5] [--steps 10] [--budget-s 420]
                                      [--out results.json]
    python benchmarks/gpu_freeswim.py --dry-run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from attnctl.core import AttentionController
from attnctl.core.window_attention import flex_available, natten_gpu_available, window_attention
from attnctl.core.window_flex import flex_compile_error
from attnctl.freeswim import DUAL, FreeSwimConfig, FreeSwimState, freeswim_controls, freeswim_pass
from attnctl.freeswim.wan_processor import wan_processor_factory

WAN_1_3B = dict(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TOY = WAN_1_3B | dict(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64,
                      num_layers=2, in_channels=4, out_channels=4)
NATIVE_GRID = (30, 52)  # 480 x 832 pixels
TEXT_TOKENS = 512


def odd_window(native: tuple[int, int], grid: tuple[int, int, int]) -> tuple[int, int]:
    """FreeSwim's window from the native grid (made odd), no larger than the target grid."""
    return tuple(min(2 * (n // 2) + 1, g) for n, g in zip(native, grid[1:]))


class Timer:
    """Wall time of a callable: CUDA events on a GPU, ``perf_counter`` on CPU; median of ``repeats`` after a warm-up."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def __call__(self, function) -> float:
        function()  # warm-up (flex compilation, plans, caches)
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                function()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                function()
                times.append((time.perf_counter() - begin) * 1e3)
        return statistics.median(times)


def backends(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["reference", "tiled"]
    names = ["flex"] if flex_available() else []
    return names + (["natten"] if natten_gpu_available() else []) + ["tiled"]


def full_attention_context(device: torch.device):
    """Flash SDPA on a GPU (the fastest full attention there); the default CPU kernel otherwise."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def kernel_rows(grid, window, heads, head_dim, dtype, device, timer) -> list[dict]:
    """The attention op alone: each window backend vs full flash attention on the same q, k, v."""
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (1, heads, math.prod(grid), head_dim)
    query, key, value = (torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3))
    window3 = (grid[0], *window)
    with full_attention_context(device):
        full_ms = timer(lambda: F.scaled_dot_product_attention(query, key, value))
    bound = math.prod(grid) / math.prod(window3)
    rows, first = [], None
    for backend in backends(device):
        out = window_attention(query, key, value, grid, window3, backend=backend)
        if backend == "flex" and flex_compile_error():  # eager flex materialises the scores: not a measurement
            rows.append(dict(part="kernel", backend=backend, error=flex_compile_error()))
            continue
        first = out if first is None else first
        ms = timer(lambda backend=backend: window_attention(query, key, value, grid, window3, backend=backend))
        speedup = full_ms / ms
        rows.append(dict(part="kernel", backend=backend, ms=ms, full_ms=full_ms, speedup=speedup,
                         flop_bound=bound, of_bound=speedup / bound,
                         max_abs_diff=(out.float() - first.float()).abs().max().item()))
    return rows


def build_transformer(config: dict, dtype: torch.dtype, device: torch.device):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 1.3B-parameter init on the host takes minutes
        model = WanTransformer3DModel(**config).to(dtype=dtype).eval()
    keep = set(model._keep_in_fp32_modules or ())  # norms, time embedding, modulation: float32 as from_pretrained
    for name, parameter in model.named_parameters():
        if keep.intersection(name.split(".")):
            parameter.data = parameter.data.float()
    return model


def model_inputs(model, grid, dtype, device, rows=1):
    patch = model.config.patch_size
    latent = (rows, model.config.in_channels, grid[0], grid[1] * patch[1], grid[2] * patch[2])
    generator = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(latent, generator=generator, device=device, dtype=dtype)
    text = torch.randn((rows, TEXT_TOKENS, model.config.text_dim), generator=generator, device=device, dtype=dtype)
    return latents, text


def forward_rows(model, grid, window, dtype, device, timer) -> list[dict]:
    """One transformer forward, window on every self-attention (dual path off), vs the stock forward."""
    latents, text = model_inputs(model, grid, dtype, device)
    t = torch.tensor([700.0], device=device)

    def forward():
        return model(latents, t, text, return_dict=False)[0]

    with full_attention_context(device):
        stock_ms = timer(forward)
    rows, first = [], None
    for backend in backends(device):
        state = FreeSwimState(FreeSwimConfig(window=window, native_tokens=math.prod(NATIVE_GRID), dual_path=False,
                                             backend=backend))
        with AttentionController(freeswim_controls(state)).installed(model, processor_factory=wan_processor_factory(model)):
            out = forward()
            first = out if first is None else first
            ms = timer(forward)
        rows.append(dict(part="forward", backend=backend, ms=ms, full_ms=stock_ms, speedup=stock_ms / ms,
                         max_abs_diff=(out.float() - first.float()).abs().max().item()))
    return rows


def step_rows(model, grid, window, dtype, device, steps, intervals=(1, 2, 5)) -> list[dict]:
    """Stage-2 steps with guidance for each cache interval, cache on the GPU and offloaded; per-step ms and peak."""
    latents, text = model_inputs(model, grid, dtype, device)
    timesteps = torch.linspace(900, 100, steps, device=device)
    offloads = [None, "cpu"] if device.type == "cuda" else [None]
    rows = []
    for cache_device in offloads:
        for interval in intervals:
            state = FreeSwimState(FreeSwimConfig(window=window, native_tokens=math.prod(NATIVE_GRID),
                                                 cache_interval=interval, cache_device=cache_device))
            gc.collect()  # the previous state's cache sits in a reference cycle: free it before the peak is reset
            controller = AttentionController(freeswim_controls(state))
            with controller.installed(model, processor_factory=wan_processor_factory(model)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                step_ms = []
                for step, t in enumerate(timesteps):
                    begin = time.perf_counter()
                    for branch in ("cond", "uncond"):
                        with freeswim_pass(model, controller, state, step, branch) as mode:
                            rows_in = 2 if mode == DUAL else 1
                            model(latents.expand(rows_in, *latents.shape[1:]), t.expand(rows_in),
                                  text.expand(rows_in, *text.shape[1:]), return_dict=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    step_ms.append((time.perf_counter() - begin) * 1e3)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            rows.append(dict(part="step", cache_interval=interval, cache_device=cache_device or "beside",
                             ms=statistics.mean(step_ms), step_ms=step_ms, dual_steps=len({s for s, _, _ in state.full_branch_runs}),
                             cache_gib=state.cache_nbytes / 2**30, peak_gib=peak))
    return rows


def run(args: argparse.Namespace) -> dict:
    begin = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    config = TOY if args.dry_run else WAN_1_3B
    grids = [(3, 8, 12)] if args.dry_run else [tuple(int(n) for n in g.split("x")) for g in args.grids]
    native = (3, 5) if args.dry_run else NATIVE_GRID
    timer = Timer(device, args.repeats)
    model = build_transformer(config, dtype, device)
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    results = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
                   torch=torch.__version__, dtype=str(dtype), rows=[], skipped=[])
    with torch.no_grad():
        for grid in grids:
            window = odd_window(native, grid)
            label = dict(grid="x".join(map(str, grid)), window="x".join(map(str, window)))
            parts = dict(kernel=(kernel_rows, grid, window, heads, head_dim, dtype, device, timer),
                         forward=(forward_rows, model, grid, window, dtype, device, timer),
                         step=(step_rows, model, grid, window, dtype, device, args.steps, args.intervals))
            for part, (measure, *arguments) in parts.items():
                if part not in args.parts:
                    continue
                if args.budget_s is not None and time.perf_counter() - begin > args.budget_s:
                    results["skipped"].append(f"{label['grid']} {part}")
                    continue
                try:
                    found = [label | row for row in measure(*arguments)]
                except Exception as error:  # out of memory, a kernel that fails to build: recorded, and on
                    found = [label | dict(part=part, error=repr(error)[:300])]
                    torch.cuda.empty_cache() if device.type == "cuda" else None
                results["rows"] += found
                print(markdown(dict(results, rows=found), header=False), flush=True)
                write(results, args.out)
    results["seconds"] = time.perf_counter() - begin
    write(results, args.out)
    return results


def write(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(results, handle, indent=1)


def markdown(results: dict, header: bool = True) -> str:
    lines = [f"# {results['device']}, torch {results['torch']}, {results['dtype']}",
             "| grid | window | part | backend / cache | ms | full ms | speed-up | of FLOP bound | max abs diff | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"] if header else []
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['grid']} | {row['window']} | {row['part']} | {row.get('backend', '')} | failed: "
                         f"{row['error']} |")
            continue
        name = row.get("backend") or (f"interval {row['cache_interval']}, cache {row['cache_device']} (steps: "
                                      + " / ".join(f"{ms:.0f}" for ms in row["step_ms"]) + " ms)")
        cells = [row["grid"], row["window"], row["part"], name, f"{row['ms']:.1f}",
                 f"{row['full_ms']:.1f}" if "full_ms" in row else "",
                 f"{row['speedup']:.2f}x" if "speedup" in row else "",
                 f"{row['of_bound']:.0%}" if "of_bound" in row else "",
                 f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else "",
                 f"{row['peak_gib']:.2f}" if "peak_gib" in row else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"skipped (over --budget-s): {', '.join(results['skipped'])}"] if header and results["skipped"] else []
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["21x34x60", "21x68x120"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 5], help="cache intervals of the step part")
    parser.add_argument("--parts", nargs="+", choices=["kernel", "forward", "step"], default=["kernel", "forward", "step"])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy transformer, 3x8x12 grid (the test)")
    parser.add_argument("--budget-s", type=float, help="skip the parts that would start after this many seconds")
    parser.add_argument("--out", help="also write the results as JSON here (after every part)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU check")
    results = run(args)
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
