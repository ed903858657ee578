"""Per-step cost of each control against stock, on every text-to-image family, side by side in one run.

Each denoiser keeps its released model's layer layout (block counts, transformer layers per level, text
lengths, heads) with the widths divided by ``--shrink`` (default 8) and a 256 px latent. One step is one
denoiser forward: the ``[uncond, cond]`` batch of 2 where the family uses classifier-free guidance, 1 for
Flux-dev (guidance-distilled). Modes are interleaved round by round so drift in machine load hits all alike.
The ratio to stock is the median over rounds of the per-round ratio, with a 95% interval (t interval of the
log ratios).

    python benchmarks/bench_families.py [--rounds 7] [--shrink 8] [--families sd sdxl sd3 flux pixart]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from attnctl.composer import RegionConstrainedCrossAttention, TokenRegion, box_cells
from attnctl.core import AttentionController, AttentionStore, guidance_rows
from attnctl.core.rows import RowLayout
from attnctl.structured import PhraseEncoding, StructuredControl
from attnctl.structured.joint import (
    JointPhrase,
    JointStructuredControl,
    appended_phrase_rows,
    phrase_rows_layout,
)

LATENT = 32  # 256 px with the 8x VAEs
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}  # df -> t


def _unet(shrink: int, xl: bool):
    from diffusers import UNet2DConditionModel

    if not xl:  # SD 1.5: 4 levels, 2 layers per block, cross-attention at 3 resolutions, 8 heads, 768-dim text
        return UNet2DConditionModel(
            block_out_channels=tuple(c // shrink for c in (320, 640, 1280, 1280)), layers_per_block=2,
            cross_attention_dim=768 // shrink, attention_head_dim=8, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3), {}  # fmt: skip
    width = [c // shrink for c in (320, 640, 1280)]  # SDXL: 3 levels, transformer depth (0, 2, 10), 2048-dim text
    time_dim, pooled = 256 // shrink, 1280 // shrink
    model = UNet2DConditionModel(
        block_out_channels=tuple(width), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + pooled,
        cross_attention_dim=2048 // shrink, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    return model, {"added_cond_kwargs": {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, 6)}}


def build(family: str, shrink: int) -> tuple[torch.nn.Module, Callable[[], object], torch.Tensor, int, int]:
    """(denoiser, one step, its text states, first word position, context width seen by cross-attention; 0 for
    joint attention)."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family in ("sd", "sdxl"):
        model, extra = _unet(shrink, family == "sdxl")
        dim = model.config.cross_attention_dim
        sample, text = torch.randn(2, 4, LATENT, LATENT), torch.randn(2, 77, dim)
        return model.eval(), lambda: model(sample, 500, encoder_hidden_states=text, **extra), text, 1, dim
    if family == "sd3":  # SD3-Medium: 24 joint blocks, 24 heads; 77 CLIP + 256 T5 tokens
        model = SD3Transformer2DModel(
            sample_size=LATENT, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
            attention_head_dim=64 // shrink, num_attention_heads=24, joint_attention_dim=4096 // shrink,
            caption_projection_dim=1536 // shrink, pooled_projection_dim=2048 // shrink, pos_embed_max_size=96)
        sample, text = torch.randn(2, 16, LATENT, LATENT), torch.randn(2, 333, 4096 // shrink)
        pooled = torch.randn(2, 2048 // shrink)
        step = lambda: model(hidden_states=sample, encoder_hidden_states=text, pooled_projections=pooled,  # noqa: E731
                             timestep=torch.tensor([500.0, 500.0]))
        return model.eval(), step, text, 1, 0
    if family == "flux":  # Flux-dev: 19 double + 38 single blocks, 24 heads of 128; 512 T5 tokens
        head = 128 // shrink
        if head % 16:
            raise ValueError(f"--shrink {shrink}: Flux's rotary axes need a head width divisible by 16 (shrink <= 8)")
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=head,
            num_attention_heads=24, joint_attention_dim=4096 // shrink, pooled_projection_dim=768 // shrink,
            guidance_embeds=True, axes_dims_rope=(head // 4, 3 * head // 8, 3 * head // 8))  # even, sum = head
        side = LATENT // 2
        sample, text = torch.randn(1, side * side, 64), torch.randn(1, 512, 4096 // shrink)
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
        image_ids = torch.cat([torch.zeros(side * side, 1), grid.float()], dim=1)
        pooled = torch.randn(1, 768 // shrink)
        step = lambda: model(hidden_states=sample, encoder_hidden_states=text, pooled_projections=pooled,  # noqa: E731
                             timestep=torch.tensor([0.5]), img_ids=image_ids, txt_ids=torch.zeros(512, 3),
                             guidance=torch.tensor([3.5]))
        return model.eval(), step, text, 0, 0
    if family == "pixart":  # PixArt-Sigma: 28 blocks, 16 heads of 72; 300 T5 tokens
        model = PixArtTransformer2DModel(
            sample_size=LATENT, num_layers=28, patch_size=2, attention_head_dim=72 // shrink, num_attention_heads=16,
            caption_channels=4096 // shrink, in_channels=4, out_channels=8, cross_attention_dim=16 * 72 // shrink,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
        sample, text = torch.randn(2, 4, LATENT, LATENT), torch.randn(2, 300, 4096 // shrink)
        step = lambda: model(sample, encoder_hidden_states=text, timestep=torch.tensor([500, 500]),  # noqa: E731
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        return model.eval(), step, text, 0, model.config.cross_attention_dim
    raise ValueError(f"family={family!r} is not one of sd, sdxl, sd3, flux, pixart")


Mode = tuple[list, RowLayout, Callable[[], AbstractContextManager]]


def modes_for(model: torch.nn.Module, text: torch.Tensor, first: int, dim: int) -> dict[str, Mode]:
    """(controls, row layout, context around the step) of each mode. Structured guidance: context sets where the
    text is a fixed cross-attention input (``dim`` > 0), phrase rows on joint attention (SD3, Flux)."""
    regions = [TokenRegion((first + 1, first + 2), lambda grid: box_cells((0, 0, 0.5, 1), grid)),
               TokenRegion((first + 5, first + 6), lambda grid: box_cells((0.5, 0, 1, 0.5), grid))]
    plain = lambda controls: (controls, guidance_rows(1), nullcontext)  # noqa: E731
    modes = {"attnctl, no control": plain([]), "attention maps": plain([AttentionStore()]),
             "regional (2 boxes)": plain([RegionConstrainedCrossAttention(regions, lambda call: call.rows["cond"],
                                                                           first_token=first)])}
    if dim:
        phrases = [[PhraseEncoding(torch.randn(text.shape[1], dim), 0, 3, first),
                    PhraseEncoding(torch.randn(text.shape[1], dim), 4, 7, first)]]
        modes["structured values (2 phrases)"] = plain([StructuredControl(phrases, "values")])
        modes["structured keys (2 phrases)"] = plain([StructuredControl(phrases, "keys")])
    else:
        joint = JointStructuredControl([[JointPhrase(0, ((first, first, 3),)), JointPhrase(1, ((first + 4, first, 3),))]])
        embeds = torch.randn(2, *text.shape[1:])
        modes["structured values (2 phrases)"] = ([joint], phrase_rows_layout(1, 2),
                                                  lambda: appended_phrase_rows(model, embeds, [0, 0], 1))
    return modes


def bench(family: str, shrink: int, rounds: int) -> list[tuple[str, float, float, float, float]]:
    model, step, text, first, dim = build(family, shrink)
    modes = modes_for(model, text, first, dim)
    times: dict[str, list[float]] = {"stock": [], **{name: [] for name in modes}}
    with torch.inference_mode():
        for round_index in range(rounds + 1):
            for name in times:
                if name == "stock":
                    start = time.perf_counter()
                    step()
                else:
                    controls, rows, around = modes[name]
                    with AttentionController(controls, rows=rows).installed(model), around():  # per call, not step
                        start = time.perf_counter()
                        step()
                elapsed = time.perf_counter() - start
                if round_index:  # round 0 warms every path up
                    times[name].append(elapsed)
    rows = []
    for name, values in times.items():
        logs = [math.log(v / s) for v, s in zip(values, times["stock"])]
        mean = statistics.fmean(logs)
        df = len(logs) - 1
        half = T_975.get(df, 2.0) * statistics.stdev(logs) / math.sqrt(len(logs)) if df else float("nan")
        rows.append((name, statistics.median(values), math.exp(statistics.median(logs)), math.exp(mean - half),
                     math.exp(mean + half)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shrink", type=int, default=8, help="divide every width by this")
    parser.add_argument("--families", nargs="+", default=["sd", "sdxl", "sd3", "flux", "pixart"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps the interleaved timings comparable
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; widths / {args.shrink}, latent {LATENT}x{LATENT}, {args.rounds} rounds")
    print("| family | mode | median step (ms) | ratio to stock (median) | 95% interval |")
    print("|---|---|---|---|---|")
    for family in args.families:
        for name, median, ratio, low, high in bench(family, args.shrink, args.rounds):
            print(f"| {family} | {name} | {median * 1e3:.0f} | {ratio:.2f}x | {low:.2f}-{high:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
