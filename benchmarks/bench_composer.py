"""Time one PrimeComposer composition against a plain image-to-image run of the same steps on the same model.

Both run side by side in one process, rounds interleaved so drift in machine load hits all alike, and every UNet
call is counted (calls and batch rows, i.e. sample evaluations). A run with ``tau_a = tau_c = 0`` (inversion,
RCA and blending, but no correlation pass or injection) separates the cost of the attention steering. Two models: the tiny test pipeline (64 px) and
an SD 1.x-shaped one (SD 1.x block layout, 768-dim text states, 8-pixel VAE, widths scaled down) at 256 px.
Weights are random: only the cost is meaningful. Wall time and the process's CPU time are both reported: on a
shared machine the CPU time (with one thread) is the steadier measure of the work done.

    python benchmarks/bench_composer.py [--steps 20] [--rounds 3] [--threads 1] [--models tiny,sd-shaped]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from attnctl import PrimeComposerPipeline
from attnctl.models.tiny import TINY_WORDS, build_tiny_sd_components
from attnctl.models.tokenizer import write_clip_tokenizer


def sd_shaped_components(width: int = 32) -> dict:
    """SD 1.x's UNet layout (4 levels, 2 layers per block, 8 heads, 768-dim context) and an 8x VAE, narrowed."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, TINY_WORDS))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, block_out_channels=(width, 2 * width, 4 * width, 4 * width), layers_per_block=2,
        cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32,
    )
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def synthetic_inputs(size: int) -> dict:
    """A background with a horizon and a subject (red disc on white) with its mask, scaled to ``size`` pixels."""
    background = np.zeros((size, size, 3), np.uint8)
    background[:] = (90, 150, 230)
    background[size * 5 // 8:] = (60, 140, 50)
    side = size // 2
    rows, cols = np.mgrid[:side, :side]
    disc = (rows - side / 2) ** 2 + (cols - side / 2) ** 2 <= (side / 2.5) ** 2
    subject = np.full((side, side, 3), 255, np.uint8)
    subject[disc] = (220, 30, 30)
    box = (size // 4, size // 4, size * 3 // 4, size * 3 // 4)
    return dict(image=background, subject_image=subject, subject_mask=disc.astype(np.uint8) * 255, target_box=box)


class UNetCounter:
    """Counts UNet forward calls and the batch rows they evaluate."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls = self.rows = 0
        unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.rows += sample.shape[0]

    def take(self) -> tuple[int, int]:
        counts, self.calls, self.rows = (self.calls, self.rows), 0, 0
        return counts


def bench_model(name: str, components: dict, size: int, steps: int, rounds: int) -> list[dict]:
    composer = PrimeComposerPipeline(**components)
    img2img = StableDiffusionImg2ImgPipeline(**composer.components)
    for pipe in (composer, img2img):
        pipe.set_progress_bar_config(disable=True)
    counter = UNetCounter(composer.unet)
    inputs = synthetic_inputs(size)
    prompt = "a red ball on the grass"
    runs = {
        "img2img (strength 1)": lambda: img2img(prompt, image=inputs["image"], strength=1.0,
                                                num_inference_steps=steps, guidance_scale=2.5, output_type="latent",
                                                generator=torch.Generator().manual_seed(0)),
        "PrimeComposer (paper)": lambda: composer(prompt, num_inference_steps=steps, guidance_scale=2.5,
                                                  subject_words="ball", inversion_token_id=None, seed=0,
                                                  output_type="latent", **inputs),
        "PrimeComposer (paper, tau_a=tau_c=0)": lambda: composer(prompt, num_inference_steps=steps,
                                                                guidance_scale=2.5, subject_words="ball",
                                                                tau_a=0.0, tau_c=0.0, inversion_token_id=None,
                                                                seed=0, output_type="latent", **inputs),
        "PrimeComposer (faithful)": lambda: composer(prompt, num_inference_steps=steps, guidance_scale=2.5,
                                                     faithful=True, inversion_token_id=None, seed=0,
                                                     output_type="latent", **inputs),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    cpu: dict[str, list[float]] = {label: [] for label in runs}
    counts: dict[str, tuple[int, int]] = {}
    for label, run in runs.items():  # warm-up round, also records the UNet counts
        run()
        counts[label] = counter.take()
    for _ in range(rounds):
        for label, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
            counter.take()
    base = statistics.median(times["img2img (strength 1)"])
    base_cpu = statistics.median(cpu["img2img (strength 1)"])
    return [dict(model=name, size=size, steps=steps, run=label, wall_s=round(statistics.median(times[label]), 3),
                 wall_ratio=round(statistics.median(times[label]) / base, 2),
                 cpu_s=round(statistics.median(cpu[label]), 3),
                 cpu_ratio=round(statistics.median(cpu[label]) / base_cpu, 2), unet_calls=counts[label][0],
                 unet_rows=counts[label][1]) for label in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared box)")
    parser.add_argument("--models", default="tiny,sd-shaped")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builders = {"tiny": (lambda: build_tiny_sd_components(seed=0), 64), "sd-shaped": (sd_shaped_components, 256)}
    rows = []
    with torch.no_grad():
        for name in args.models.split(","):
            build, size = builders[name]
            rows += bench_model(name, build(), size, args.steps, args.rounds)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print("| model | px | steps | run | wall s | x img2img | CPU s | x img2img | UNet calls | UNet rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['size']} | {row['steps']} | {row['run']} | {row['wall_s']} | "
              f"{row['wall_ratio']} | {row['cpu_s']} | {row['cpu_ratio']} | {row['unet_calls']} | "
              f"{row['unet_rows']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
