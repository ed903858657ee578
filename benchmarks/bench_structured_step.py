"""Time one denoising step: stock vs structured "values" vs "keys" guidance, side by side in one run.

The UNet keeps SD 1.x's layer shapes where they set attention cost (768-dim text states, 77 tokens,
8 heads, two transformer layers per block, cross-attention at three resolutions) and scales the widths and
the latent down to fit a CPU. Modes are interleaved round by round so drift in machine load hits all alike;
the fastest step of each mode is reported beside the median, as the estimate least disturbed by other load.

    python benchmarks/bench_structured_step.py [--rounds 15] [--latent 32] [--phrases 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from attnctl.core import AttentionController, guidance_rows
from attnctl.structured import PhraseEncoding, StructuredControl


def build_unet(width: int) -> UNet2DConditionModel:
    """SD 1.x block layout at ``width`` base channels (SD 1.x: 320)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=32,
    ).eval()


def _timed_step(unet: UNet2DConditionModel, sample: torch.Tensor, states: torch.Tensor) -> float:
    start = time.perf_counter()
    unet(sample, 500, encoder_hidden_states=states)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--latent", type=int, default=32, help="latent side (SD 1.x at 512 px: 64)")
    parser.add_argument("--width", type=int, default=32, help="base channels (SD 1.x: 320)")
    parser.add_argument("--phrases", type=int, default=2, help="noun phrases in the prompt")
    args = parser.parse_args()

    unet = build_unet(args.width)
    torch.manual_seed(1)
    sample = torch.randn(2, 4, args.latent, args.latent)  # [uncond, cond]
    states = torch.randn(2, 77, 768)
    spans = [(1 + 3 * i, 4 + 3 * i) for i in range(args.phrases)]
    phrases = [[PhraseEncoding(torch.randn(77, 768), a, b) for a, b in spans]]
    modes = {
        "stock": None,
        "attnctl, no control": AttentionController(),
        "values": AttentionController([StructuredControl(phrases, "values")], rows=guidance_rows(1)),
        "keys": AttentionController([StructuredControl(phrases, "keys")], rows=guidance_rows(1)),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        for round_index in range(args.rounds + 1):
            for name, controller in modes.items():
                if controller is None:
                    elapsed = _timed_step(unet, sample, states)
                else:
                    with controller.installed(unet):  # swapping processors is per call, not per step
                        elapsed = _timed_step(unet, sample, states)
                if round_index:  # round 0 warms up every path
                    times[name].append(elapsed)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"UNet {params:.1f}M params, latent {args.latent}x{args.latent}, batch 2 (CFG), "
          f"{args.phrases} phrases, median of {args.rounds} rounds")
    base = statistics.median(times["stock"])
    best = min(times["stock"])
    print("| mode | median step (ms) | ratio to stock (median) | fastest step (ms) | ratio to stock (fastest) |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        median, fastest = statistics.median(values), min(values)
        print(f"| {name} | {median * 1e3:.1f} | {median / base:.3f}x | {fastest * 1e3:.1f} | {fastest / best:.3f}x |")


if __name__ == "__main__":
    main()
