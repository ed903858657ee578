"""Attribute binding on the embedded model: stock, structured guidance, Attend-and-Excite, SynGen, side by side.

Prompts are the 360 two-object prompts whose colour pair never appeared together in training
(``attnctl.shapes.evaluation.held_out_binding_prompts``, or ``--prompts N`` of them evenly spread); the modes
run at the same time, one process each, and draw the same (prompt, seed) jobs from the same initial noise. An image counts as bound when the checker finds both requested objects, each in its
own colour. Reports rates with Wilson 95% intervals and, per structured mode, the paired comparison with
stock (images only it gets right / only stock gets right, exact two-sided sign test).

    python benchmarks/bench_attribute_binding.py --seeds 3 --json outputs/bench_binding.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import torch
from scipy.stats import binomtest

from attnctl.models.default import default_model_path
from attnctl.shapes.checker import detect_shapes
from attnctl.shapes.evaluation import (
    all_objects_drawn,
    generate_images,
    held_out_binding_prompts,
    seeded_jobs,
    wilson_interval,
)
from attnctl.shapes.scene import indefinite_article

# mode -> (pipeline class exported by attnctl, its keyword arguments given the number of steps). The binding
# methods alter the first half of the steps, the paper's 25 of 50 (fixed before measuring, not tuned).
MODES = {
    "stock": ("StructuredDiffusionPipeline", lambda steps: {"struct_mode": None}),
    "values": ("StructuredDiffusionPipeline", lambda steps: {"struct_mode": "values"}),
    "keys": ("StructuredDiffusionPipeline", lambda steps: {"struct_mode": "keys"}),
    "attend-excite": ("AttendAndExcitePipeline", lambda steps: {"max_iter_to_alter": steps // 2}),
    "syngen": ("SynGenPipeline", lambda steps: {"num_intervention_steps": steps // 2}),
}
DEFAULT_MODES = ["stock", "values", "attend-excite", "syngen"]


def judge(images: list, wanted: list[tuple[tuple[str, str], ...]]) -> dict[str, list[bool]]:
    """Per image: both objects bound; both colours present anywhere; both shapes present anywhere; leakage
    (a requested colour drawn on the other requested shape)."""
    detections = [detect_shapes(image) for image in images]
    return {
        "bound": [all_objects_drawn(found, objects) for found, objects in zip(detections, wanted)],
        "colours": [
            all(any(d.colour == colour for d in found) for colour, _ in objects)
            for found, objects in zip(detections, wanted)
        ],
        "shapes": [
            all(any(d.shape == shape for d in found) for _, shape in objects)
            for found, objects in zip(detections, wanted)
        ],
        "leakage": [
            any((d.shape, d.colour) in {(objects[0][1], objects[1][0]), (objects[1][1], objects[0][0])} for d in found)
            for found, objects in zip(detections, wanted)
        ],
    }


def summary(flags: list[bool]) -> dict:
    """Hits, rate and Wilson 95% interval of a list of outcomes."""
    hits = sum(flags)
    low, high = wilson_interval(hits, len(flags))
    return {
        "hits": hits,
        "n": len(flags),
        "rate": round(hits / len(flags), 4),
        "ci95": [round(low, 4), round(high, 4)],
    }


def paired(mode_flags: list[bool], stock_flags: list[bool]) -> dict:
    """Discordant pairs against stock and the exact sign-test p-value (McNemar's exact test)."""
    only_mode = sum(m and not s for m, s in zip(mode_flags, stock_flags))
    only_stock = sum(s and not m for m, s in zip(mode_flags, stock_flags))
    p_value = binomtest(only_mode, only_mode + only_stock).pvalue if only_mode + only_stock else 1.0
    return {"only_this_mode": only_mode, "only_stock": only_stock, "p_value": float(f"{p_value:.2g}")}


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (so a subset still covers every colour pair and shape)."""
    if not 1 <= count <= len(items):
        raise ValueError(f"--prompts {count}: choose between 1 and {len(items)}")
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def run_mode(task: tuple) -> tuple[str, dict[str, list[bool]], float]:
    """One mode over all jobs in its own process: load, generate, judge; returns per-image outcomes."""
    model, name, jobs, wanted, args = task
    import attnctl

    torch.set_num_threads(args.threads)
    pipeline_name, method_kwargs = MODES[name]
    pipe = getattr(attnctl, pipeline_name).from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = generate_images(
        pipe, jobs, args.batch_size, num_inference_steps=args.steps, guidance_scale=args.guidance,
        **method_kwargs(args.steps),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if args.samples is not None:
        args.samples.mkdir(parents=True, exist_ok=True)
        for index in range(0, len(images), max(1, len(images) // 12)):
            images[index].save(args.samples / f"{name}-{index:04d}.png")
    return name, judge(images, wanted), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="pipeline directory (default: the shipped one)"
    )
    parser.add_argument(
        "--prompts", type=int, default=360, help="N held-out prompts, evenly spread (max 360)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per mode process")
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--samples", type=Path, default=None, help="also save a few images per mode here")
    args = parser.parse_args(argv)

    from attnctl import StructuredDiffusionPipeline

    model = args.model or default_model_path()
    prompts = spread(held_out_binding_prompts(), args.prompts)
    jobs = seeded_jobs(prompts, args.seeds)
    wanted = [p.objects for p in prompts for _ in range(args.seeds)]
    # structured guidance can only bind what the parser hands it: both "a <colour> <shape>" phrases
    parser_pipe = StructuredDiffusionPipeline.from_pretrained(model)
    both_parsed = sum(
        {f"{indefinite_article(c)} {c} {s}" for c, s in p.objects}
        <= {x.text for x in parser_pipe.parse_phrases(p.prompt)}
        for p in prompts
    )
    del parser_pipe
    results = {
        "model": str(model),
        "prompts": len(prompts),
        "seeds": args.seeds,
        "images_per_mode": len(jobs),
        "steps": args.steps,
        "guidance": args.guidance,
        "prompts_with_both_object_phrases_parsed": both_parsed,
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), one process per mode, "
        f"{args.threads} torch thread(s) each",
        "modes": {},
    }
    # every mode runs at once in its own process, on the same jobs (same prompts, seeds, initial noise)
    tasks = [(model, name, jobs, wanted, args) for name in args.modes]
    with multiprocessing.get_context("spawn").Pool(len(tasks)) as pool:
        finished = pool.map(run_mode, tasks)
    outcomes = {name: flags for name, flags, _ in finished}
    for name, flags, seconds in finished:
        results["modes"][name] = {key: summary(values) for key, values in flags.items()}
        results["modes"][name]["seconds"] = round(seconds, 1)
        results["modes"][name]["seconds_per_image"] = round(seconds / len(jobs), 3)
        if name != "stock" and "stock" in outcomes:
            results["modes"][name]["vs_stock"] = {
                key: paired(flags[key], outcomes["stock"][key]) for key in ("bound", "shapes", "leakage")
            }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
