"""Held-out compositions for the CLIP-conditioned model: every colour pair is seen, some bindings are not.

A composition is the set of (colour, shape) objects of a scene. For each held-out colour pair {c1, c2}
(c1 before c2 alphabetically) and each pair of distinct shapes s1 before s2 in ``SHAPES``, the composition
{(c1, s1), (c2, s2)} never appears in a training image, while its attribute-swapped twin
{(c1, s2), (c2, s1)} does. A bag-of-words text encoder gives the two nearly the same states, so a denoiser
conditioned on it tends to draw the twin it has seen: Stable Diffusion's binding failure, by its cause.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from .evaluation import PromptObjects
from .scene import (
    COLOURS,
    HELD_OUT_COLOUR_PAIRS,
    HELD_OUT_SINGLE_CAPTIONS,
    RELATIONS,
    SHAPES,
    Scene,
    indefinite_article,
    sample_layout,
    sample_scene,
)

Composition = frozenset[tuple[str, str]]

HELD_OUT_COMPOSITIONS: tuple[Composition, ...] = tuple(
    frozenset({(c1, s1), (c2, s2)})
    for c1, c2 in (sorted(pair) for pair in HELD_OUT_COLOUR_PAIRS)
    for s1, s2 in itertools.combinations(SHAPES, 2)
)
INVERSE_RELATIONS = {
    "and": "and",
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def swapped(composition: Iterable[tuple[str, str]]) -> Composition:
    """The twin of a two-object composition with the colours exchanged between the shapes."""
    (c1, s1), (c2, s2) = sorted(composition)
    return frozenset({(c1, s2), (c2, s1)})


def is_training_composition(objects: Iterable[tuple[str, str]]) -> bool:
    """False when ``objects`` contain a held-out composition (also as part of a three-object scene)."""
    present = set(objects)
    return not any(held <= present for held in HELD_OUT_COMPOSITIONS)


def sample_composition_training_scene(rng: np.random.Generator) -> Scene:
    """One training scene: 1-3 objects (40/45/15%), any colour pair, no held-out composition or caption."""
    num_objects, relation = sample_layout(rng)
    while True:
        scene = sample_scene(rng, num_objects, relation)
        if is_training_composition((obj.colour, obj.shape) for obj in scene.objects):
            break
    if scene.caption in HELD_OUT_SINGLE_CAPTIONS:
        scene = Scene(scene.objects, scene.relation, (False,))
    return scene


def two_object_prompt(first: tuple[str, str], relation: str, second: tuple[str, str]) -> PromptObjects:
    """``"a red circle to the left of a green square"`` and its objects in order."""
    phrases = [f"{indefinite_article(colour)} {colour} {shape}" for colour, shape in (first, second)]
    return PromptObjects(f"{phrases[0]} {relation} {phrases[1]}", (first, second))


def composition_prompts(compositions: Iterable[Composition]) -> list[PromptObjects]:
    """Both orders of every composition under every relation (2 x 5 prompts per composition)."""
    return [
        two_object_prompt(first, relation, second)
        for composition in compositions
        for first, second in itertools.permutations(sorted(composition))
        for relation in RELATIONS
    ]


def held_out_composition_prompts() -> list[PromptObjects]:
    """Prompts of the held-out compositions (18 compositions x 10 = 180 prompts)."""
    return composition_prompts(HELD_OUT_COMPOSITIONS)


def seen_twin_prompts() -> list[PromptObjects]:
    """Prompts of their swapped twins, seen in training: same colours, shapes and words, other binding."""
    return composition_prompts(swapped(held) for held in HELD_OUT_COMPOSITIONS)


def relation_of(prompt: PromptObjects) -> str:
    """The relation word(s) of a two-object prompt (``"to the left of"``); ``ValueError`` if there is none."""
    for relation in RELATIONS:
        if f" {relation} " in prompt.prompt:
            return relation
    raise ValueError(f"prompt={prompt.prompt!r}: no relation among {RELATIONS}")


def reordered(prompt: PromptObjects) -> str:
    """The same scene described the other way round: ``"B to the right of A"`` for ``"A to the left of B"``."""
    first, second = prompt.objects
    return two_object_prompt(second, INVERSE_RELATIONS[relation_of(prompt)], first).prompt


def swapped_twin_prompt(prompt: PromptObjects) -> PromptObjects:
    """The caption with the two objects' colours exchanged (same words, other binding)."""
    (c1, s1), (c2, s2) = prompt.objects
    return two_object_prompt((c2, s1), relation_of(prompt), (c1, s2))


def recoloured(prompt: PromptObjects) -> PromptObjects:
    """The caption with its second colour replaced by the first palette colour it does not use (a negative
    that differs in words, unlike the swapped twin)."""
    (c1, s1), (c2, s2) = prompt.objects
    other = next(c for c in COLOURS if c not in (c1, c2))
    return two_object_prompt((c1, s1), relation_of(prompt), (other, s2))


def reshaped(prompt: PromptObjects) -> PromptObjects:
    """The caption with its second shape replaced by the first shape it does not use: does the encoder read
    shape words as well as colour words?"""
    (c1, s1), (c2, s2) = prompt.objects
    other = next(s for s in SHAPES if s not in (s1, s2))
    return two_object_prompt((c1, s1), relation_of(prompt), (c2, other))
