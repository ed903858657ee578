"""Evaluation sets and statistics for the embedded models: held-out prompts, batched sampling, Wilson intervals
and paired exact tests.

Used by ``benchmarks/eval_default_model.py`` (quality bar), ``benchmarks/bench_attribute_binding.py`` and
``benchmarks/bench_layout.py``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checker import Detection, has_object
from .scene import HELD_OUT_COLOUR_PAIRS, HELD_OUT_SINGLE_CAPTIONS, RELATIONS, SHAPES, indefinite_article


@dataclass(frozen=True)
class PromptObjects:
    """A prompt and the (colour, shape) objects it asks for, in order."""

    prompt: str
    objects: tuple[tuple[str, str], ...]


def held_out_single_prompts() -> list[PromptObjects]:
    """The single-object captions never seen in training (``"a small red circle"``)."""
    return [PromptObjects(caption, (tuple(caption.split()[-2:]),)) for caption in HELD_OUT_SINGLE_CAPTIONS]


def held_out_binding_prompts() -> list[PromptObjects]:
    """Two-object prompts whose colour pair never co-occurs in training: ordered colour pair x ordered pair
    of distinct shapes x relation (6 x 12 x 5 = 360 prompts)."""
    prompts = []
    for pair in HELD_OUT_COLOUR_PAIRS:
        for first_colour, second_colour in itertools.permutations(sorted(pair)):
            for first_shape, second_shape in itertools.permutations(SHAPES, 2):
                for relation in RELATIONS:
                    first, second = (first_colour, first_shape), (second_colour, second_shape)
                    text = f"{indefinite_article(first_colour)} {first_colour} {first_shape} {relation} "
                    text += f"{indefinite_article(second_colour)} {second_colour} {second_shape}"
                    prompts.append(PromptObjects(text, (first, second)))
    return prompts


def all_objects_drawn(detections: list[Detection], objects: Sequence[tuple[str, str]]) -> bool:
    """Whether every requested (colour, shape) appears among the detections (each with its own colour)."""
    return all(has_object(detections, colour, shape) for colour, shape in objects)


def only_objects_drawn(detections: list[Detection], objects: Sequence[tuple[str, str]]) -> bool:
    """Whether the detections are exactly the requested objects, nothing missing and nothing extra."""
    return sorted((d.colour, d.shape) for d in detections) == sorted(objects)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; z = 1.96 gives 95%)."""
    if total <= 0 or not 0 <= successes <= total:
        raise ValueError(f"successes={successes}, total={total}: need 0 <= successes <= total and total > 0")
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(flags: Sequence[bool]) -> dict:
    """Hits, rate and Wilson 95% interval of a list of outcomes (rounded to 4 places)."""
    hits = sum(flags)
    low, high = wilson_interval(hits, len(flags))
    return {"hits": hits, "n": len(flags), "rate": round(hits / len(flags), 4), "ci95": [round(low, 4), round(high, 4)]}


def paired_test(flags: Sequence[bool], reference: Sequence[bool]) -> dict:
    """Outcomes against a ``reference`` run of the same jobs from the same noise: the discordant pairs (only this
    run right / only the reference right) and McNemar's exact two-sided p-value, a sign test on them
    (McNemar 1947)."""
    from scipy.stats import binomtest

    if len(flags) != len(reference):
        raise ValueError(f"{len(flags)} outcomes against {len(reference)} reference outcomes: pair the same jobs")
    won = sum(a and not b for a, b in zip(flags, reference))
    lost = sum(b and not a for a, b in zip(flags, reference))
    p_value = binomtest(won, won + lost).pvalue if won + lost else 1.0
    return {"only_this_mode": won, "only_stock": lost, "p_value": float(f"{p_value:.2g}")}


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive chunks of ``items`` of at most ``size``."""
    if size < 1:
        raise ValueError(f"size={size}: batches need at least one item")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seeded_jobs(prompts: Sequence[PromptObjects], seeds: int) -> list[tuple[str, int]]:
    """(prompt, seed) jobs, ``seeds`` per prompt, every job with its own seed (prompt index * seeds + k), so
    no two images share initial noise and the samples stay independent."""
    return [(p.prompt, index * seeds + k) for index, p in enumerate(prompts) for k in range(seeds)]


def generate_images(pipe, jobs: Sequence[tuple[str, int]], batch_size: int, **call_kwargs) -> list:
    """PIL images for (prompt, seed) jobs, each drawn from its own ``torch.Generator().manual_seed(seed)``
    so a job's image does not depend on how jobs are batched."""
    images = []
    for chunk in batched(jobs, batch_size):
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        output = pipe([prompt for prompt, _ in chunk], generator=generators, **call_kwargs)
        images.extend(output.images)
    return images


def report_results(results: dict, path: Path | None) -> None:
    """Print a benchmark's ``results`` as JSON and, when ``path`` is given, also write them there."""
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
