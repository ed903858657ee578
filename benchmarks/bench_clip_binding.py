"""The CLIP model's bag-of-words weakness: can its towers tell a caption from its attribute-swapped twin?

For every two-object composition with two colours and two shapes (15 colour pairs x 6 shape pairs x 2
bindings x 2 orders x 5 relations = 1800 captions), each caption is scored against its twin with the
colours exchanged ("a red circle and a blue square" vs "a blue circle and a red square": the same words):
- text tower: the query is the same scene described the other way round ("a blue square and a red
  circle"); correct when it is closer to the caption than to the twin;
- image and text towers: the query is a rendered scene of the caption; correct when the image is closer to
  the caption than to the twin.
Chance is 50%; a bag-of-words encoder scores 0% (ties). As a control, each test is repeated with a negative
that differs in words, one colour replaced by a colour not in the caption, and again with one shape replaced
by a shape not in the caption (does the encoder read shapes as well as colours?). Rates with Wilson 95%
intervals. Also, from the CLIP phase's own first ``--batches`` training batches (``--batch-size`` scenes each,
the training seed's): the share of multi-object scenes that share their batch with a scene of the same words
bound differently (an in-batch hard negative the plain objective meets by itself).

    python benchmarks/bench_clip_binding.py --model clip --json outputs/bench_clip_binding.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
from pathlib import Path

import numpy as np
import torch

from attnctl.cli.common import model_argument
from attnctl.models.contrastive import image_embeddings, text_embeddings, twin_retrieval
from attnctl.models.training import batch_rng
from attnctl.shapes.compositions import (
    composition_prompts,
    recoloured,
    relation_of,
    reordered,
    reshaped,
    swapped_twin_prompt,
)
from attnctl.shapes.evaluation import PromptObjects, rate_summary, report_results
from attnctl.shapes.render import render_batch
from attnctl.shapes.scene import COLOURS, SHAPES, sample_any_scene, sample_scene


def all_two_object_prompts() -> list[PromptObjects]:
    """Every composition of two colours on two shapes, both orders, every relation."""
    compositions = [
        frozenset({(c1, s1), (c2, s2)})
        for c1, c2 in itertools.combinations(COLOURS, 2)
        for s1, s2 in itertools.permutations(SHAPES, 2)
    ]
    return composition_prompts(compositions)


def rendered(prompts: list[PromptObjects], seed: int) -> torch.Tensor:
    """One rendered scene per caption (its colours, shapes and relation), images (batch, 3, 64, 64)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for prompt in prompts:
        (c1, s1), (c2, s2) = prompt.objects
        scenes.append(
            sample_scene(
                rng, 2, relation_of(prompt), colours=(c1, c2), shapes=(s1, s2), size_word_probability=0
            )
        )
    return torch.from_numpy(render_batch(scenes))


def rate(flags: torch.Tensor) -> dict:
    """Hits, rate and Wilson 95% interval of a boolean tensor."""
    return rate_summary([bool(flag) for flag in flags])


def in_batch_twins(seed: int, batches: int, batch_size: int) -> list[bool]:
    """Per multi-object scene of the CLIP phase's first ``batches`` batches: does another scene of its batch have
    the same colours and shapes bound differently (``"a red circle and a blue square"`` beside ``"a blue circle
    and a red square"``)?"""
    flags = []
    for step in range(batches):
        rng = batch_rng(seed, "clip", step)
        scenes = [sample_any_scene(rng) for _ in range(batch_size)]
        words = [(frozenset(o.colour for o in s.objects), tuple(sorted(o.shape for o in s.objects))) for s in scenes]
        bindings = [frozenset((o.colour, o.shape) for o in s.objects) for s in scenes]
        for i, scene in enumerate(scenes):
            if len(scene.objects) > 1:
                flags.append(any(words[j] == words[i] and bindings[j] != bindings[i]
                                 for j in range(batch_size) if j != i))  # fmt: skip
    return flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="clip", help="pipeline folder with a clip/ subfolder, or alias")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered scenes' layouts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=200, help="CLIP training batches to count twins in")
    parser.add_argument("--batch-size", type=int, default=128, help="the CLIP phase's batch size")
    parser.add_argument("--training-seed", type=int, default=0, help="the training run's --seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from transformers import CLIPModel, CLIPTokenizer

    torch.set_num_threads(args.threads)
    model = Path(model_argument(args.model))
    clip = CLIPModel.from_pretrained(model / "clip").eval()
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    prompts = all_two_object_prompts()
    captions = text_embeddings(clip, tokenizer, [p.prompt for p in prompts])  # (N, D)
    twins = text_embeddings(clip, tokenizer, [swapped_twin_prompt(p).prompt for p in prompts])
    others = text_embeddings(clip, tokenizer, [recoloured(p).prompt for p in prompts])
    reshapes = text_embeddings(clip, tokenizer, [reshaped(p).prompt for p in prompts])
    paraphrases = text_embeddings(clip, tokenizer, [reordered(p) for p in prompts])
    images = image_embeddings(clip, rendered(prompts, args.seed))
    results = {
        "model": str(model),
        "captions": len(prompts),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), {args.threads} torch thread(s)",
        "text_tower": {
            "vs_swapped_twin": rate(twin_retrieval(paraphrases, captions, twins)),
            "vs_recoloured": rate(twin_retrieval(paraphrases, captions, others)),
            "mean_cosine_caption_twin": round(float((captions * twins).sum(-1).mean()), 4),
            "vs_reshaped": rate(twin_retrieval(paraphrases, captions, reshapes)),
            "mean_cosine_caption_recoloured": round(float((captions * others).sum(-1).mean()), 4),
            "mean_cosine_caption_reshaped": round(float((captions * reshapes).sum(-1).mean()), 4),
        },
        "image_and_text_towers": {
            "vs_swapped_twin": rate(twin_retrieval(images, captions, twins)),
            "vs_recoloured": rate(twin_retrieval(images, captions, others)),
            "vs_reshaped": rate(twin_retrieval(images, captions, reshapes)),
        },
        "training_batches": {
            "batches": args.batches,
            "batch_size": args.batch_size,
            "multi_object_scenes_with_an_in_batch_twin": rate_summary(
                in_batch_twins(args.training_seed, args.batches, args.batch_size)
            ),
        },
    }
    report_results(results, args.json)


if __name__ == "__main__":
    main()
