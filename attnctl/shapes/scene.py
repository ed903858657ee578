"""Procedural scenes of one to three coloured shapes, their plain-English captions and the held-out splits.

A :class:`Scene` is pure data (shape, colour, size class, centre and extent of every object plus how the
caption relates them); :mod:`attnctl.shapes.render` draws it. Sampling is a pure function of a seed, so the
training stream is reproducible and resumable from a step index.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = (245, 245, 245)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star")
SIZE_RANGES = {"small": (14, 18), "medium": (20, 25), "large": (27, 33)}  # bounding-box side in pixels
SIZE_WORDS = {"small": "small", "medium": "", "large": "large"}
RELATIONS = ("and", "to the left of", "to the right of", "above", "below")

# Colour pairs never seen together in one training image: the attribute-binding benchmark prompts them.
HELD_OUT_COLOUR_PAIRS = (
    frozenset({"red", "green"}),
    frozenset({"blue", "yellow"}),
    frozenset({"orange", "purple"}),
)
# Single-object captions never used in training (the same objects are captioned without the size word).
HELD_OUT_SINGLE_CAPTIONS = tuple(
    f"a {size} {colour} {shape}"  # "small" and "large" both take "a"
    for index, (size, colour, shape) in enumerate(itertools.product(("small", "large"), COLOURS, SHAPES))
    if index % 4 == (index // 4) % 4
)

CAPTION_WORDS = (
    "a", "an", "and", "to", "the", "left", "right", "of", "above", "below", "small", "large", *COLOURS, *SHAPES
)  # fmt: skip


@dataclass(frozen=True)
class ShapeObject:
    """One shape: what it is, its size class and where it sits (centre and bounding-box side, pixels)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    side: float

    def phrase(self, with_size: bool) -> str:
        """The noun phrase for this object, e.g. ``"a small red circle"``, ``"an orange star"``."""
        size_word = SIZE_WORDS[self.size] if with_size else ""
        words = [*([size_word] if size_word else []), self.colour, self.shape]
        return " ".join([indefinite_article(words[0]), *words])


@dataclass(frozen=True)
class Scene:
    """Objects in caption order, the relation joining two objects, and which objects name their size."""

    objects: tuple[ShapeObject, ...]
    relation: str
    sized: tuple[bool, ...]

    @property
    def caption(self) -> str:
        """The plain-English caption: ``"a red circle and a blue square"``, ``"a star to the left of ..."``."""
        phrases = [obj.phrase(with_size) for obj, with_size in zip(self.objects, self.sized)]
        if len(phrases) == 2:
            return f"{phrases[0]} {self.relation} {phrases[1]}"
        return " and ".join(phrases)


def indefinite_article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"`` (enough for the caption vocabulary)."""
    return "an" if word[0] in "aeiou" else "a"


def is_training_colour_set(colours: set[str]) -> bool:
    """True unless ``colours`` contains both colours of a held-out pair."""
    return not any(pair <= colours for pair in HELD_OUT_COLOUR_PAIRS)


def _relation_holds(first: ShapeObject, second: ShapeObject, relation: str) -> bool:
    """Whether the centres satisfy the spatial relation, with a margin of a third of the larger side."""
    margin = max(first.side, second.side) / 3
    return {
        "and": True,
        "to the left of": first.cx + margin < second.cx,
        "to the right of": first.cx > second.cx + margin,
        "above": first.cy + margin < second.cy,
        "below": first.cy > second.cy + margin,
    }[relation]


def _overlaps(obj: ShapeObject, others: list[ShapeObject], gap: float = 3.0) -> bool:
    """Whether ``obj``'s bounding box comes within ``gap`` pixels of any of ``others``'."""
    return any(
        abs(obj.cx - o.cx) < (obj.side + o.side) / 2 + gap
        and abs(obj.cy - o.cy) < (obj.side + o.side) / 2 + gap
        for o in others
    )


def _place(rng: np.random.Generator, shape: str, colour: str, size: str) -> ShapeObject:
    """A shape of the size class at a uniformly random position fully inside the image (2 px border)."""
    low, high = SIZE_RANGES[size]
    side = float(rng.uniform(low, high))
    half = side / 2 + 2
    cx, cy = rng.uniform(half, IMAGE_SIZE - half, size=2)
    return ShapeObject(shape, colour, size, float(cx), float(cy), side)


def sample_scene(
    rng: np.random.Generator,
    num_objects: int,
    relation: str = "and",
    colours: tuple[str, ...] | None = None,
    shapes: tuple[str, ...] | None = None,
    sizes: tuple[str, ...] | None = None,
    size_word_probability: float = 0.5,
) -> Scene:
    """A random non-overlapping scene; unspecified colours/shapes/sizes are drawn uniformly.

    Colours are drawn distinct per scene; ``relation`` applies to two-object scenes only.
    """
    if num_objects not in (1, 2, 3):
        raise ValueError(f"num_objects={num_objects}: scenes hold 1, 2 or 3 objects")
    if relation not in RELATIONS or (relation != "and" and num_objects != 2):
        raise ValueError(f"relation={relation!r}: use one of {RELATIONS}; spatial ones need num_objects=2")
    for _attempt in range(1000):
        chosen_colours = colours or tuple(rng.choice(COLOURS, size=num_objects, replace=False))
        chosen_shapes = shapes or tuple(rng.choice(SHAPES, size=num_objects))
        chosen_sizes = sizes or tuple(rng.choice(tuple(SIZE_RANGES), size=num_objects))
        objects: list[ShapeObject] = []
        for shape, colour, size in zip(chosen_shapes, chosen_colours, chosen_sizes):
            obj = _place(rng, str(shape), str(colour), str(size))
            for _retry in range(50):
                if not _overlaps(obj, objects):
                    break
                obj = _place(rng, str(shape), str(colour), str(size))
            objects.append(obj)
        if any(_overlaps(obj, objects[:i]) for i, obj in enumerate(objects)):
            continue
        if num_objects == 2 and not _relation_holds(objects[0], objects[1], relation):
            continue
        sized = tuple(bool(rng.random() < size_word_probability) for _ in objects)
        return Scene(tuple(objects), relation, sized)
    raise ValueError(f"could not place colours={colours} shapes={shapes} sizes={sizes} without overlap")


def sample_layout(rng: np.random.Generator) -> tuple[int, str]:
    """A captioned scene's object count (1-3: 40/45/15%) and relation (any of ``RELATIONS`` in 60% of two-object
    scenes, else ``"and"``)."""
    num_objects = int(rng.choice([1, 2, 3], p=[0.4, 0.45, 0.15]))
    relation = str(rng.choice(RELATIONS)) if num_objects == 2 and rng.random() < 0.6 else "and"
    return num_objects, relation


def sample_any_scene(rng: np.random.Generator) -> Scene:
    """A captioned scene with nothing held out (every colour pair, composition and caption).

    What a text encoder pretrained beyond the denoiser's data sees, as Stable Diffusion's CLIP saw far more than
    SD's training images: the held-out sets are held out of the denoiser only."""
    return sample_scene(rng, *sample_layout(rng))


def sample_training_scene(rng: np.random.Generator) -> Scene:
    """One training scene: 1-3 objects (40/45/15%), no held-out colour pair, no held-out caption."""
    num_objects, relation = sample_layout(rng)
    while True:
        colours = tuple(str(c) for c in rng.choice(COLOURS, size=num_objects, replace=False))
        if is_training_colour_set(set(colours)):
            break
    scene = sample_scene(rng, num_objects, relation, colours=colours)
    if scene.caption in HELD_OUT_SINGLE_CAPTIONS:
        scene = Scene(scene.objects, scene.relation, (False,))
    return scene


def sample_codec_scene(rng: np.random.Generator) -> Scene:
    """A scene for the image codec (VAE decoder): 1-3 objects in any colours, held-out pairs included.

    Held-out pairs are about what the text-conditioned denoiser has seen; a decoder that never saw blue next
    to yellow learns to repaint yellow as orange when blue is present, which would fake binding failures.
    """
    return sample_scene(rng, int(rng.choice([1, 2, 3], p=[0.4, 0.45, 0.15])))
