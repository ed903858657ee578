"""Why do Attend-and-Excite and SynGen move (or not move) the ``joint`` embedded model's images? Measurements, no
tuning (on the held-out colour pairs of that model's training).

For held-out two-object prompts and a few seeds (DDIM, 20 steps, guidance 4, the benchmark's setting) it reports:

* attention mass of the conditional pass at the first step, per layer resolution: the start token, the two
  subject nouns, the other prompt tokens, the end token and padding;
* Attend-and-Excite's subject peaks (after its token softmax and smoothing) and SynGen's loss, before any update;
* per method and step-size multiplier (x1 = the paper's step), the gradient RMS per latent element, the latent
  change of one update relative to the latents' RMS, the loss at the first and the last measured step, and
  the mean absolute pixel change of the final image against stock (0-255).

    python benchmarks/diagnose_binding.py --prompts 8 --seeds 2 --json outputs/diagnose_binding.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from attnctl import AttendAndExcitePipeline, SynGenPipeline
from attnctl.binding import AttendExciteLoss
from attnctl.core import AttentionController
from attnctl.guidance import GradientMaps
from attnctl.models.default import default_model_path
from attnctl.shapes.evaluation import held_out_binding_prompts


def spread(items: list, count: int) -> list:
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def attention_mass(pipe, prompt: str, seed: int, subjects: list[int]) -> dict[str, dict[str, float]]:
    """Share of the attention per token group in the first guidance forward, per layer grid (mean over pixels)."""
    tokens = len(pipe.tokenizer(prompt).input_ids)  # BOS, words, EOS
    cond, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    pipe.scheduler.set_timesteps(20)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    result = {}
    for grid in (16, 8, 4):
        maps = GradientMaps((grid, grid), stop_early=False)
        with torch.no_grad(), AttentionController([maps]).installed(pipe.unet), maps.record():
            pipe.unet(latents, pipe.scheduler.timesteps[0], encoder_hidden_states=cond)
        mass = maps.maps()[0].mean(dim=(1, 2))  # (tokens,)
        words = [i for i in range(1, tokens - 1) if i not in subjects]
        result[f"{grid}x{grid}"] = {
            "start": round(float(mass[0]), 4),
            "subjects": round(float(mass[subjects].sum()), 4),
            "other_words": round(float(mass[words].sum()), 4),
            "end_and_padding": round(float(mass[tokens - 1 :].sum()), 4),
            "excite_peak_min": round(float(AttendExciteLoss([[(i,) for i in subjects]]).subject_peaks(
                maps.maps(), 0).min()), 4),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    stock = StableDiffusionPipeline.from_pretrained(default_model_path("joint"))
    ae, syngen = AttendAndExcitePipeline(**stock.components), SynGenPipeline(**stock.components)
    for pipe in (stock, ae, syngen):
        pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=20, guidance_scale=4.0, output_type="np")
    methods = {
        "attend-excite": lambda m, **kw: ae(max_iter_to_alter=10, scale_factor=20 * m, **kw),
        "syngen": lambda m, **kw: syngen(num_intervention_steps=10, syngen_step_size=20 * m, **kw),
    }
    rows = []
    for spec in spread(held_out_binding_prompts(), args.prompts):
        subjects = [i for s in ae.subject_indices(spec.prompt) for i in s]
        for seed in range(args.seeds):
            base = stock(spec.prompt, generator=torch.Generator().manual_seed(seed), **call).images[0]
            row = {"prompt": spec.prompt, "seed": seed, "mass": attention_mass(stock, spec.prompt, seed, subjects)}
            for name, run in methods.items():
                for multiplier in args.multipliers:
                    out = run(multiplier, prompt=spec.prompt, generator=torch.Generator().manual_seed(seed), **call)
                    log = [h for h in out.guidance_log if h["iteration"] == 0]
                    alpha = 20 * multiplier
                    row[f"{name} x{multiplier:g}"] = {
                        "grad_rms_first": log[0]["grad_rms"][0],
                        "relative_update_first": alpha * log[0]["grad_rms"][0],  # latents have unit RMS at t=T
                        "loss_first": log[0]["loss"][0],
                        "loss_last": log[-1]["loss"][0],
                        "measurements": len(out.guidance_log),
                        "pixel_change": float(np.abs(out.images[0] - base).mean() * 255),
                    }
            rows.append(row)
            print(json.dumps(row))
    keys = [k for k in rows[0] if k not in ("prompt", "seed", "mass")]
    summary = {k: {f: float(np.mean([r[k][f] for r in rows])) for f in rows[0][k]} for k in keys}
    mass = {g: {f: float(np.mean([r["mass"][g][f] for r in rows])) for f in rows[0]["mass"][g]}
            for g in rows[0]["mass"]}
    result = {"images": len(rows), "mean": summary, "attention_mass_step0": mass, "rows": rows}
    print(json.dumps({"mean": summary, "attention_mass_step0": mass}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
