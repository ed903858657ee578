"""Attribute binding on an embedded model: stock vs every binding method in ``METHODS``, side by side.

Prompt sets (``--sets``, ``--prompts N`` of each evenly spread):
- ``held-out-pairs``: the ``joint`` model's 360 two-object prompts whose colour pair never appeared together
  in its training (``attnctl.shapes.evaluation.held_out_binding_prompts``);
- ``held-out-compositions`` / ``seen-twins`` (the default sets): the default (CLIP) model's 180 prompts of
  compositions held out of its denoiser's training, and their attribute-swapped twins, which it saw
  (``attnctl.shapes.compositions``); prompt i of one set is the twin of prompt i of the other, same seeds.
The methods run at the same time, one process each, and draw the same (prompt, seed) jobs from the same
initial noise. An image counts as bound when the checker finds both requested objects, each in its own
colour, and as leaked when it shows a requested shape in the other object's colour. Reports rates with
Wilson 95% intervals, per method the paired comparison with stock (images only it gets right / only stock
gets right, exact two-sided sign test), and stock's paired held-out vs seen-twin comparison.

    python benchmarks/bench_attribute_binding.py --seeds 3 --json outputs/bench_binding.json
    python benchmarks/bench_attribute_binding.py --model clip --sets held-out-compositions seen-twins
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnctl.cli.common import model_argument, model_help
from attnctl.shapes.checker import detect_shapes
from attnctl.shapes.compositions import held_out_composition_prompts, seen_twin_prompts
from attnctl.shapes.evaluation import (
    all_objects_drawn,
    generate_images,
    held_out_binding_prompts,
    paired_test,
    rate_summary,
    report_results,
    seeded_jobs,
)
from attnctl.shapes.scene import indefinite_article

# method name: (pipeline class, its keyword arguments given the number of steps); add a binding method here and
# it is benchmarked. Attend-and-Excite and SynGen alter the first half of the steps, the papers' 25 of 50 (fixed
# before measuring, not tuned).
METHODS: dict[str, tuple[str, Callable[[int], dict]]] = {
    "stock": ("attnctl.StructuredDiffusionPipeline", lambda steps: {"struct_mode": None}),
    "values": ("attnctl.StructuredDiffusionPipeline", lambda steps: {"struct_mode": "values"}),
    "keys": ("attnctl.StructuredDiffusionPipeline", lambda steps: {"struct_mode": "keys"}),
    "attend-excite": ("attnctl.AttendAndExcitePipeline", lambda steps: {"max_iter_to_alter": steps // 2}),
    "syngen": ("attnctl.SynGenPipeline", lambda steps: {"num_intervention_steps": steps // 2}),
}
PROMPT_SETS = {
    "held-out-pairs": held_out_binding_prompts,
    "held-out-compositions": held_out_composition_prompts,
    "seen-twins": seen_twin_prompts,
}


def pipeline_class(dotted: str) -> type:
    """The class a ``METHODS`` entry names (``"package.module.Class"``)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def judge(images: list, wanted: list[tuple[tuple[str, str], ...]]) -> dict[str, list[bool]]:
    """Per image: both objects bound; both colours present anywhere; both shapes present anywhere."""
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
        "leaked": [leaked(found, objects) for found, objects in zip(detections, wanted)],
    }


def leaked(detections: list, objects: tuple[tuple[str, str], ...]) -> bool:
    """Whether a requested shape is drawn in the other requested object's colour (two-object prompts)."""
    (first_colour, first_shape), (second_colour, second_shape) = objects
    return any(
        (d.colour, d.shape) in {(second_colour, first_shape), (first_colour, second_shape)} for d in detections
    )


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (so a subset still covers every colour pair and shape)."""
    if not 1 <= count <= len(items):
        raise ValueError(f"--prompts {count}: choose between 1 and {len(items)}")
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def run_mode(task: tuple) -> tuple[str, dict[str, list[bool]], float]:
    """One method over all jobs in its own process: load, generate, judge; returns per-image outcomes."""
    model, name, jobs, wanted, args = task
    torch.set_num_threads(args.threads)
    dotted, kwargs = METHODS[name]
    pipe = pipeline_class(dotted).from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = generate_images(
        pipe, jobs, args.batch_size, num_inference_steps=args.steps, guidance_scale=args.guidance,
        **kwargs(args.steps),
    )
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
    parser.add_argument("--model", default=None, help=model_help("default"))
    parser.add_argument(
        "--sets", nargs="+", default=["held-out-compositions", "seen-twins"], choices=list(PROMPT_SETS),
        help="prompt sets (default: the default model's held-out compositions and their seen twins)",
    )
    parser.add_argument(
        "--prompts", type=int, default=None, help="N prompts of each set, evenly spread (default: all)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per mode process")
    parser.add_argument("--modes", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--samples", type=Path, default=None, help="also save a few images per mode here")
    args = parser.parse_args(argv)

    from attnctl import StructuredDiffusionPipeline

    model = model_argument(args.model)
    sets = {name: PROMPT_SETS[name]() for name in args.sets}
    sets = {name: spread(prompts, args.prompts or len(prompts)) for name, prompts in sets.items()}
    prompts = [p for chosen in sets.values() for p in chosen]
    # seeds restart per set, so prompt i of one set and prompt i of its twin set share initial noise
    jobs = [job for chosen in sets.values() for job in seeded_jobs(chosen, args.seeds)]
    wanted = [p.objects for p in prompts for _ in range(args.seeds)]
    slices, start = {}, 0
    for name, chosen in sets.items():
        slices[name], start = slice(start, start + len(chosen) * args.seeds), start + len(chosen) * args.seeds
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
        "sets": {name: len(chosen) for name, chosen in sets.items()},
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
        results["modes"][name] = {"seconds": round(seconds, 1), "seconds_per_image": round(seconds / len(jobs), 2)}
        for set_name, part in slices.items():
            entry = {key: rate_summary(values[part]) for key, values in flags.items()}
            if name != "stock" and "stock" in outcomes:
                entry["vs_stock"] = paired_test(flags["bound"][part], outcomes["stock"]["bound"][part])
            results["modes"][name][set_name] = entry
    if {"held-out-compositions", "seen-twins"} <= set(slices) and "stock" in outcomes:
        bound = outcomes["stock"]["bound"]  # same seeds, twin prompts: a paired comparison
        held, seen = bound[slices["held-out-compositions"]], bound[slices["seen-twins"]]
        if len(held) == len(seen):
            comparison = paired_test(held, seen)
            results["stock_held_out_vs_seen_twins"] = {
                "only_held_out": comparison["only_this_mode"],
                "only_seen_twin": comparison["only_stock"],
                "p_value": comparison["p_value"],
            }
    report_results(results, args.json)


if __name__ == "__main__":
    main()
