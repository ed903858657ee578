"""Layout adherence on the embedded model: stock vs each mode of the regional control, side by side.

Prompts, layouts and seeds are fixed here, before any measurement. Six colour pairs (none held out of training)
x eight layouts (left/right halves, top/bottom halves and the two diagonals of opposite quarters, each with the
circle and the square swapped) x both word orders ("a C1 circle and a C2 square" / "a C2 square and a C1
circle") = 96 prompts, one seed each (the item's index), 20 DDIM steps, guidance 4. Every configuration draws
the same 96 (prompt, layout, seed) jobs from the same initial noise.

Per requested object the checker (``attnctl.shapes.checker``) must find it with its colour and shape: *centred*
when such a detection has its centre inside the object's box; *IoU* of that detection's bounding box with the
box (best over matching detections, 0 when not found); *outside*: detections whose centre lies outside every box.
An image *adheres* when both objects are centred. Guard: each requested object *drawn* anywhere, and a
single-object set (12 prompts "a <colour> <circle|square>", one box each) drawn correctly.

Rates come with Wilson 95% intervals, comparisons with stock are paired (McNemar's exact test on discordant
images; mean paired differences with normal 95% intervals). ``--attention N`` also records, on the first N jobs,
how much cross-attention the end-of-text and padding keys take inside and outside the boxes, with stock and with
those keys masked inside the boxes.

    nice -n 10 python benchmarks/bench_layout.py --configs forbid forbid+mask bias prompts --json outputs/bench_layout.json
    nice -n 10 python benchmarks/bench_layout.py --configs guidance --jobs 16 --singles 4 --attention 0 \
        --json outputs/bench_layout_guidance.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from attnctl.cli.common import model_argument, model_help
from attnctl.shapes.checker import PALETTE_NAMES, Detection, colour_labels, detect_shapes
from attnctl.shapes.evaluation import paired_test, rate_summary

PAIRS = [("red", "blue"), ("red", "yellow"), ("green", "blue"), ("green", "purple"), ("yellow", "purple"),
         ("orange", "blue")]
HALVES = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
          "bottom": (0.0, 0.5, 1.0, 1.0), "top-left": (0.0, 0.0, 0.5, 0.5), "bottom-right": (0.5, 0.5, 1.0, 1.0),
          "top-right": (0.5, 0.0, 1.0, 0.5), "bottom-left": (0.0, 0.5, 0.5, 1.0)}
GEOMETRIES = [("left", "right"), ("top", "bottom"), ("top-left", "bottom-right"), ("top-right", "bottom-left")]
LAYOUTS = [pair for first, second in GEOMETRIES for pair in ((first, second), (second, first))]  # circle, square
#: The configurations compared; parameters chosen on a separate tuning run (seeds from 10_000, see BENCHMARKS.md).
CONFIGS = {
    "stock": None,
    "forbid": dict(layout_mode="forbid"),
    "forbid+mask": dict(layout_mode="forbid", mask_special="boxes"),
    "bias": dict(layout_mode="bias", layout_strength=0.5, layout_until=1.0),
    "prompts": dict(layout_mode="prompts", base_ratio=0.3),
    # eta from a 4-job check (seeds from 10_000: eta 10 and 100 moved nothing, 1000 one object); 5 of 20 steps
    "guidance": dict(layout_mode="guidance", layout_strength=1000.0, layout_until=0.25),
}
#: The tuning run (``--tune``): a few settings per mode on other seeds, to fix CONFIGS before measuring.
TUNING = {
    "stock": None,
    "bias w=0.25": dict(layout_mode="bias", layout_strength=0.25),
    "bias w=0.5": dict(layout_mode="bias", layout_strength=0.5),
    "bias w=1": dict(layout_mode="bias", layout_strength=1.0),
    "prompts beta=0": dict(layout_mode="prompts", base_ratio=0.0),
    "prompts beta=0.3": dict(layout_mode="prompts", base_ratio=0.3),
}
STEPS, GUIDANCE, SIZE = 20, 4.0, 64


def two_object_jobs(seed_offset: int = 0) -> list[dict]:
    """The 96 fixed jobs: prompt, regions (phrase, box) and the (colour, shape, box) objects asked for."""
    jobs = []
    for (first, second), (circle_at, square_at), circle_first in itertools.product(PAIRS, LAYOUTS, (True, False)):
        circle, square = f"{first} circle", f"{second} square"
        words = (circle, square) if circle_first else (square, circle)
        objects = [(first, "circle", HALVES[circle_at]), (second, "square", HALVES[square_at])]
        jobs.append(dict(prompt=f"a {words[0]} and a {words[1]}".replace("a orange", "an orange"),
                         regions=[(circle, HALVES[circle_at]), (square, HALVES[square_at])],
                         objects=objects, seed=seed_offset + len(jobs)))
    return jobs


def single_object_jobs(seed_offset: int = 0) -> list[dict]:
    """12 fixed single-object jobs, one box each (the four halves in turn)."""
    jobs = []
    for colour, shape in itertools.product(PALETTE_NAMES, ("circle", "square")):
        box = HALVES[["left", "right", "top", "bottom"][len(jobs) % 4]]
        jobs.append(dict(prompt=f"a {colour} {shape}".replace("a orange", "an orange"),
                         regions=[(f"{colour} {shape}", box)], objects=[(colour, shape, box)],
                         seed=seed_offset + 1000 + len(jobs)))
    return jobs


def detection_box(image: np.ndarray, detection: Detection) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixels of the connected blob of ``detection``'s colour nearest its centre."""
    labels = colour_labels(image) == PALETTE_NAMES.index(detection.colour)
    pieces, count = ndimage.label(labels, structure=np.ones((3, 3)))
    best, best_distance = None, math.inf
    for piece in range(1, count + 1):
        ys, xs = np.nonzero(pieces == piece)
        distance = math.hypot(xs.mean() - detection.cx, ys.mean() - detection.cy)
        if distance < best_distance:
            best, best_distance = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), distance
    return best if best is not None else (detection.cx, detection.cy, detection.cx + 1, detection.cy + 1)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def inside(detection: Detection, box: tuple[float, ...]) -> bool:
    return box[0] * SIZE <= detection.cx < box[2] * SIZE and box[1] * SIZE <= detection.cy < box[3] * SIZE


def judge(image, objects: list[tuple[str, str, tuple]]) -> dict:
    """Per image: per object drawn / centred / IoU, and the detections outside every box."""
    pixels = np.asarray(image)
    found = detect_shapes(pixels)
    result = {"drawn": [], "centred": [], "iou": []}
    for colour, shape, box in objects:
        matches = [d for d in found if d.colour == colour and d.shape == shape]
        pixel_box = tuple(v * SIZE for v in box)
        result["drawn"].append(bool(matches))
        result["centred"].append(any(inside(d, box) for d in matches))
        result["iou"].append(max((iou(detection_box(pixels, d), pixel_box) for d in matches), default=0.0))
    result["outside"] = sum(not any(inside(d, box) for _, _, box in objects) for d in found)
    return result


def run_config(task: tuple) -> tuple[str, list[dict], list[dict], float, int]:
    """Generate and judge every job with one configuration in its own process."""
    model, name, settings, jobs, singles, threads = task
    from attnctl import RegionalDiffusionPipeline

    torch.set_num_threads(threads)
    pipe = RegionalDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    outcomes = {}
    start = time.perf_counter()
    for key, group in (("pairs", jobs), ("singles", singles)):
        images = [pipe(job["prompt"], regions=job["regions"] if settings else None, num_inference_steps=STEPS,
                       guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(job["seed"]),
                       **(settings or {})).images[0] for job in group]
        outcomes[key] = [judge(image, job["objects"]) for image, job in zip(images, group)]
    return name, outcomes["pairs"], outcomes["singles"], time.perf_counter() - start, len(jobs) + len(singles)


def attention_shares(task: tuple) -> tuple[str, dict]:
    """Mean cross-attention share of end/padding keys and of each phrase, inside vs outside the boxes."""
    model, mask, jobs, threads = task
    from attnctl.pipelines.regional import conditional_rows
    from diffusers import StableDiffusionPipeline

    from attnctl import RegionalDiffusionPipeline
    from attnctl.core import AttentionStore, guidance_rows
    from attnctl.layout import LayoutSettings, layout_controls, region_masks, special_positions

    torch.set_num_threads(threads)
    pipe = RegionalDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    shares = {"special_inside": [], "special_outside": [], "phrase_inside": [], "phrase_outside": []}
    for job in jobs:
        boxes = [box for _, box in job["regions"]]
        tokens = pipe.region_tokens(job["prompt"], job["regions"])
        call = {**pipe.default_call(), "prompt": job["prompt"], "num_inference_steps": STEPS}
        settings = LayoutSettings(mode="forbid", mask_special=mask or "off")
        controls = layout_controls(pipe, settings, call, boxes, tokens, conditional_rows) if mask else []
        store = AttentionStore()
        with pipe.install([*controls, store], guidance_rows(1)):
            StableDiffusionPipeline.__call__(pipe, job["prompt"], num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                                             generator=torch.Generator().manual_seed(job["seed"]))
        maps = store.maps()[1]  # (tokens, 16, 16): the conditional row
        latent = tuple(maps.shape[-2:])
        masks = region_masks(boxes, latent)  # (regions, cells)
        flat = maps.flatten(1)  # (tokens, cells)
        special = flat[special_positions(pipe, call)].sum(0)  # (cells,)
        any_box = masks.any(0)
        shares["special_inside"].append(float(special[any_box].mean()))
        if (~any_box).any():
            shares["special_outside"].append(float(special[~any_box].mean()))
        for mask_r, tokens_r in zip(masks, tokens):
            phrase = flat[tokens_r].sum(0)
            shares["phrase_inside"].append(float(phrase[mask_r].mean()))
            shares["phrase_outside"].append(float(phrase[~mask_r].mean()))
    return mask or "stock", {k: round(statistics.mean(v), 4) if v else None for k, v in shares.items()}


def mean_interval(values: list[float]) -> dict:
    """Mean and normal 95% interval."""
    mean = statistics.mean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def report(name: str, outcomes: list[dict], singles: list[dict], stock: tuple | None) -> dict:
    adheres = [all(o["centred"]) for o in outcomes]
    centred = [c for o in outcomes for c in o["centred"]]
    drawn = [c for o in outcomes for c in o["drawn"]]
    ious = [v for o in outcomes for v in o["iou"]]
    outside = [float(o["outside"]) for o in outcomes]
    single = [o["drawn"][0] for o in singles]
    row = {"both_centred": rate_summary(adheres), "object_centred": rate_summary(centred), "iou": mean_interval(ious),
           "outside_per_image": mean_interval(outside), "object_drawn": rate_summary(drawn)}
    if single:
        row["single_object_drawn"] = rate_summary(single)
    if stock is not None:
        base, base_singles = stock
        row["vs_stock"] = {
            "both_centred": paired_test(adheres, [all(o["centred"]) for o in base]),
            "object_centred": paired_test(centred, [c for o in base for c in o["centred"]]),
            "iou_difference": mean_interval([a - b for a, b in zip(ious, [v for o in base for v in o["iou"]])]),
            "outside_difference": mean_interval([a - float(b["outside"]) for a, b in zip(outside, base)]),
            "object_drawn": paired_test(drawn, [c for o in base for c in o["drawn"]]),
        }
        if single:
            row["vs_stock"]["single_object_drawn"] = paired_test(single, [o["drawn"][0] for o in base_singles])
    return row


def compare(model: str, configs: dict, jobs: list[dict], singles: list[dict], attention: int, processes: int,
            threads: int) -> dict:
    """Run every configuration (``configs["stock"]`` is None) on the same jobs and report them side by side."""
    tasks = [(model, name, settings, jobs, singles, threads) for name, settings in configs.items()]
    shares_tasks = [(model, mask, jobs[:attention], threads) for mask in (None, "boxes")]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pending = pool.map_async(attention_shares, shares_tasks) if attention else None
        runs = {name: (pairs, ones, seconds, count) for name, pairs, ones, seconds, count
                in pool.imap_unordered(run_config, tasks)}
        shares = dict(pending.get()) if pending is not None else {}
    stock = (runs["stock"][0], runs["stock"][1])
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}",
        "jobs": len(jobs), "single_jobs": len(singles), "steps": STEPS, "guidance": GUIDANCE,
        "seeds": [jobs[0]["seed"], jobs[-1]["seed"]], "wall_seconds": round(time.perf_counter() - started, 1),
        "attention_shares": shares, "configs": {},
    }
    for name, settings in configs.items():
        pairs, ones, seconds, count = runs[name]
        row = report(name, pairs, ones, None if name == "stock" else stock)
        row["settings"] = settings
        row["seconds_per_image"] = round(seconds / count, 3)
        results["configs"][name] = row
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=model_help("default"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--jobs", type=int, default=32, help="N of the 96 two-object jobs, evenly spread")
    parser.add_argument("--singles", type=int, default=8, help="the first N of the 12 single-object jobs")
    parser.add_argument("--tune", action="store_true", help="run the TUNING settings instead of CONFIGS")
    parser.add_argument("--seed-offset", type=int, default=0, help="shift every seed (10_000 for tuning runs)")
    parser.add_argument("--attention", type=int, default=8, help="jobs for the attention-share measurement")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if "stock" not in args.configs:
        args.configs.insert(0, "stock")  # every comparison is paired with stock
    every = two_object_jobs(args.seed_offset)
    if not 1 <= args.jobs <= len(every):
        raise ValueError(f"--jobs {args.jobs}: choose between 1 and {len(every)}")
    jobs = every[:: len(every) // args.jobs][: args.jobs]  # evenly spread: every pair, layout and word order
    configs = TUNING if args.tune else {name: CONFIGS[name] for name in args.configs}
    singles = single_object_jobs(args.seed_offset)[: args.singles]
    results = compare(model_argument(args.model), configs, jobs, singles, args.attention, args.processes,
                      args.threads)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
