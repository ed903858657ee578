"""Stage-2 wall time of FreeSwimPipeline with cache_interval 1 vs 2 vs 5, side by side in one run.

A small Wan built from configs (2 blocks, 2 heads x 64 channels, random weights; attnctl.models.tiny_wan)
refines a user video (the video-to-video entry point, so stage 1 is skipped) from the native 256 x 256 to
1024 x 1024 pixels, 29 frames: a token grid of 8 x 64 x 64 with a 17 x 17 window, 10 steps at strength 1,
classifier-free guidance on, ``output_type="latent"`` (no decode). Reported per interval: the number of dual
(full-branch) passes, the denoising loop's wall and process CPU time (first transformer call to last; the VAE
encode of the input, identical for every interval, is outside it), the time inside the transformer, the whole
call, and the loop's speed-up over interval 1 (CPU time is the steadier one on a shared machine). The cases run interleaved, ``--repeats`` rounds, best loop time kept.

    nice -n 10 python benchmarks/bench_freeswim_pipeline.py [--size 1024] [--native 256] [--frames 29]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from attnctl.pipelines.freeswim import FreeSwimPipeline

from attnctl.models.tiny_wan import build_tiny_wan_components


def small_wan_pipeline() -> FreeSwimPipeline:
    """Tiny text encoder and VAE, a 2-block transformer with 2 heads of 64 channels (attention-bound)."""
    components = build_tiny_wan_components(
        seed=0, transformer_config=dict(num_attention_heads=2, attention_head_dim=64, ffn_dim=256)
    )
    pipe = FreeSwimPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed_call(pipe: FreeSwimPipeline, video: np.ndarray, interval: int, args) -> dict:
    starts, ends = [], []  # (wall, process CPU) at each transformer call's start and end

    def enter(module, args_, kwargs):
        starts.append((time.perf_counter(), time.process_time()))

    def leave(module, args_, kwargs, output):
        ends.append((time.perf_counter(), time.process_time()))

    hooks = [
        pipe.transformer.register_forward_pre_hook(enter, with_kwargs=True),
        pipe.transformer.register_forward_hook(leave, with_kwargs=True),
    ]
    start = time.perf_counter()
    pipe(
        "a cat walking on the beach",
        negative_prompt="blurry",
        video=video,
        height=args.size,
        width=args.size,
        native_height=args.native,
        native_width=args.native,
        num_inference_steps=args.steps,
        strength=1.0,
        cache_interval=interval,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    wall = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    runs = pipe.freeswim_states["transformer"].full_branch_runs
    return {
        "call": wall,
        "loop": ends[-1][0] - starts[0][0],
        "loop_cpu": ends[-1][1] - starts[0][1],
        "transformer": sum(end[0] - begin[0] for begin, end in zip(starts, ends)),
        "dual": len({step for step, _, _ in runs}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="target height and width in pixels")
    parser.add_argument("--native", type=int, default=256, help="native height and width in pixels")
    parser.add_argument("--frames", type=int, default=29)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    pipe = small_wan_pipeline()
    rng = np.random.default_rng(0)
    video = rng.random((args.frames, args.native, args.native, 3), dtype=np.float32)  # frames in [0, 1]
    grid = ((args.frames - 1) // 4 + 1, args.size // 16, args.size // 16)
    print(f"# FreeSwim stage 2: token grid {'x'.join(map(str, grid))}, native {args.native}px, {args.steps} steps, "
          "2 blocks x 2 heads x 64, CFG on")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    best: dict[int, dict] = {}
    for _ in range(args.repeats):
        for interval in args.intervals:
            result = timed_call(pipe, video, interval, args)
            if interval not in best or result["loop"] < best[interval]["loop"]:
                best[interval] = result
    base = best[args.intervals[0]]
    print("| cache_interval | dual passes | loop s | loop CPU s | transformer s | whole call s | speed-up (loop) | "
          "speed-up (loop CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for interval, result in best.items():
        print(
            f"| {interval} | {result['dual']} | {result['loop']:.1f} | {result['loop_cpu']:.1f} | "
            f"{result['transformer']:.1f} | {result['call']:.1f} | {base['loop'] / result['loop']:.2f}x | "
            f"{base['loop_cpu'] / result['loop_cpu']:.2f}x |"
        )


if __name__ == "__main__":
    main()
