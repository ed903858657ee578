"""Quality bar of an embedded model (an alias such as ``default`` or ``joint``, or a folder) and its sample grid.

On the single-object captions held out of training (``attnctl.shapes.scene.HELD_OUT_SINGLE_CAPTIONS``), draw
``--seeds`` images each and ask the classical checker whether the requested colour and shape are there
("drawn") and whether nothing else is ("only"). The bar is "drawn" >= ``--bar`` (85%, issue #21). With
``--against`` a second model draws the same jobs from the same noise, and the two are compared paired
(McNemar's exact test on the images only one of them gets right).

    python benchmarks/eval_default_model.py --seeds 10 --grid docs/images/default-model-samples.png
    python benchmarks/eval_default_model.py --model default --against joint --seeds 10
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from attnctl.cli.common import model_argument, model_help
from attnctl.shapes.checker import detect_shapes
from attnctl.shapes.evaluation import (
    all_objects_drawn,
    generate_images,
    held_out_single_prompts,
    only_objects_drawn,
    paired_test,
    rate_summary,
    report_results,
    seeded_jobs,
)

GRID_PROMPTS = (
    "a red circle",
    "a large blue star",
    "a small yellow triangle",
    "a green square",
    "a purple circle and an orange star",
    "a yellow square to the left of a red triangle",
    "a blue circle above a green triangle",
    "a red star and a blue square and a yellow circle",
)


def save_grid(pipe, path: Path, seeds: int, call_kwargs: dict) -> None:
    """One row per ``GRID_PROMPTS`` entry (prompt written on the left), ``seeds`` samples per row."""
    jobs = [(prompt, seed) for prompt in GRID_PROMPTS for seed in range(seeds)]
    images = generate_images(pipe, jobs, batch_size=len(jobs), **call_kwargs)
    label_width, size = 300, images[0].width
    grid = Image.new("RGB", (label_width + seeds * size, len(GRID_PROMPTS) * size), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(GRID_PROMPTS):
        draw.text((6, row * size + size // 2 - 6), prompt, fill="black")
        for column in range(seeds):
            grid.paste(images[row * seeds + column], (label_width + column * size, row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def evaluate(model: str, jobs: list, wanted: list, batch_size: int, call_kwargs: dict) -> tuple[dict, dict, object]:
    """Draw the jobs with one model and judge them: (results, per-image flags by measure, the pipeline)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = generate_images(pipe, jobs, batch_size, **call_kwargs)
    seconds = time.perf_counter() - start
    detections = [detect_shapes(image) for image in images]
    flags = {
        "drawn": [all_objects_drawn(found, objects) for found, objects in zip(detections, wanted)],
        "only": [only_objects_drawn(found, objects) for found, objects in zip(detections, wanted)],
        "colour": [any(d.colour == objects[0][0] for d in found) for found, objects in zip(detections, wanted)],
        "shape": [any(d.shape == objects[0][1] for d in found) for found, objects in zip(detections, wanted)],
    }
    results = {"model": model, "seconds": round(seconds, 1), "drawn": rate_summary(flags["drawn"]),
               "only": rate_summary(flags["only"])}  # fmt: skip
    results["colour_rate"] = sum(flags["colour"]) / len(jobs)
    results["shape_rate"] = sum(flags["shape"]) / len(jobs)
    return results, flags, pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help=model_help("default"))
    parser.add_argument(
        "--against", default=None, help="also draw the same jobs with this model and test the two paired"
    )
    parser.add_argument("--seeds", type=int, default=10, help="samples per held-out prompt")
    parser.add_argument("--bar", type=float, default=0.85, help="the quality bar on the 'drawn' rate")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, default=None, help="also save a sample grid PNG here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    call_kwargs = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    prompts = held_out_single_prompts()
    jobs = seeded_jobs(prompts, args.seeds)
    wanted = [p.objects for p in prompts for _ in range(args.seeds)]
    results, flags, pipe = evaluate(model_argument(args.model), jobs, wanted, args.batch_size, call_kwargs)
    results.update(samples=len(jobs), steps=args.steps, guidance=args.guidance,
                   machine=f"{platform.machine()} {torch.get_num_threads()} threads")  # fmt: skip
    results["bar"], results["quality_bar_met"] = args.bar, results["drawn"]["rate"] >= args.bar
    if args.against is not None:
        other, other_flags, _ = evaluate(model_argument(args.against), jobs, wanted, args.batch_size, call_kwargs)
        other["paired_vs_model"] = {  # only_this_mode: images only --against got right; only_stock: only --model
            measure: paired_test(other_flags[measure], flags[measure]) for measure in ("drawn", "only")
        }
        results["against"] = other
    report_results(results, args.json)
    if args.grid:
        save_grid(pipe, args.grid, seeds=8, call_kwargs=call_kwargs)
        print(f"sample grid written to {args.grid}")


if __name__ == "__main__":
    main()
