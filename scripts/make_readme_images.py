"""Render the README's figures from the ``joint`` embedded model (the README's method tables were measured on it;
docs/default-model.md says why).

    python scripts/make_readme_images.py [--out docs/images] [--steps 20] [--guidance 4] [--only NAME ...]

Writes, each grid with one row per prompt and one column per method, every cell from the row's seed:

* ``structured-comparison.png``: stock, structured ``values`` and ``keys``;
* ``structured-heatmaps.png``: per-token attention maps of one image;
* ``binding-comparison.png``: stock, structured ``values``, Attend-and-Excite and SynGen (the binding methods
  alter the first half of the steps, the papers' 25 of 50);
* ``layout-comparison.png``: stock and the regional control's modes, the boxes drawn over each image (red: the
  first phrase's box, blue: the second's).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import attnctl
from attnctl.models.default import default_model_path

PROMPTS = [
    ("a red circle and a blue square", 3),
    ("a yellow star and a green triangle", 1),
    ("a purple square and an orange circle", 2),
    ("a small blue triangle to the left of a large red star", 4),
]
LAYOUT_JOBS = Path(__file__).resolve().parents[1] / "examples" / "demo-layout.jsonl"
SCALE = 2
README_MODEL = "joint"

# column label -> (pipeline class name, keyword arguments given the number of steps)
Columns = list[tuple[str, str, Callable[[int], dict]]]
STRUCTURED: Columns = [
    ("stock", "StructuredDiffusionPipeline", lambda steps: {"struct_mode": None}),
    ("values", "StructuredDiffusionPipeline", lambda steps: {"struct_mode": "values"}),
    ("keys", "StructuredDiffusionPipeline", lambda steps: {"struct_mode": "keys"}),
]
BINDING: Columns = [
    ("stock", "StructuredDiffusionPipeline", lambda steps: {"struct_mode": None}),
    ("structured", "StructuredDiffusionPipeline", lambda steps: {"struct_mode": "values"}),
    ("attend-excite", "AttendAndExcitePipeline", lambda steps: {"max_iter_to_alter": steps // 2}),
    ("syngen", "SynGenPipeline", lambda steps: {"num_intervention_steps": steps // 2}),
]
LAYOUT: Columns = [
    ("stock", "RegionalDiffusionPipeline", lambda steps: {"regions": None}),
    ("forbid", "RegionalDiffusionPipeline", lambda steps: {"layout_mode": "forbid"}),
    ("bias", "RegionalDiffusionPipeline", lambda steps: {"layout_mode": "bias", "layout_strength": 0.5}),
    ("prompts", "RegionalDiffusionPipeline", lambda steps: {"layout_mode": "prompts", "base_ratio": 0.3}),
]


def _label(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 14), "white")
    canvas.paste(image, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), text, fill="black")
    return canvas


def _stack(images: list[Image.Image], horizontal: bool) -> Image.Image:
    size = ((sum(i.width for i in images), max(i.height for i in images)) if horizontal else
            (max(i.width for i in images), sum(i.height for i in images)))
    out, offset = Image.new("RGB", size, "white"), 0
    for image in images:
        out.paste(image, (offset, 0) if horizontal else (0, offset))
        offset += image.width if horizontal else image.height
    return out


def _draw_boxes(image: Image.Image, boxes: list[tuple[float, ...]]) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for box, colour in zip(boxes, ("red", "blue")):
        x0, y0, x1, y1 = (v * s for v, s in zip(box, (image.width, image.height) * 2))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour)
    return image


def comparison_grid(rows: list[tuple[str, int, dict]], columns: Columns, steps: int, guidance: float,
                    boxes: list[list[tuple[float, ...]]] | None = None) -> Image.Image:
    """One row per ``(prompt, seed, extra call arguments)``, one column per method, all from the row's seed."""
    model, pipes = str(default_model_path(README_MODEL)), {}
    grid_rows = []
    for index, (prompt, seed, extra) in enumerate(rows):
        cells = []
        for label, class_name, arguments in columns:
            if class_name not in pipes:
                pipes[class_name] = getattr(attnctl, class_name).from_pretrained(model)
                pipes[class_name].set_progress_bar_config(disable=True)
            call = {**extra, **arguments(steps)}
            image = pipes[class_name](prompt, generator=torch.Generator().manual_seed(seed),
                                      num_inference_steps=steps, guidance_scale=guidance, **call).images[0]
            image = image.resize((image.width * SCALE, image.height * SCALE))
            if boxes is not None:
                image = _draw_boxes(image, boxes[index])
            cells.append(_label(image, label))
        grid_rows.append(_label(_stack(cells, horizontal=True), prompt))
    return _stack(grid_rows, horizontal=False)


def heatmaps(steps: int, guidance: float) -> Image.Image:
    """The first prompt's image and its per-token cross-attention maps."""
    pipe = attnctl.StructuredDiffusionPipeline.from_pretrained(default_model_path(README_MODEL))
    pipe.set_progress_bar_config(disable=True)
    prompt, seed = PROMPTS[0]
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
               guidance_scale=guidance, return_attention_maps=True)
    heat = out.attention_maps[0]
    base = np.asarray(out.images[0], dtype=np.float32) / 255.0
    tiles = [_label(out.images[0].resize((128, 128)), "image")]
    for token, mask in zip(heat.tokens, heat.normalized().numpy()):
        overlay = 0.45 * base + 0.55 * np.stack([mask, 0.2 * mask, 1.0 - mask], axis=-1)
        tiles.append(_label(Image.fromarray((overlay.clip(0, 1) * 255).astype(np.uint8)).resize((128, 128)), token))
    return _stack(tiles, horizontal=True)


def layout_rows() -> tuple[list[tuple[str, int, dict]], list[list[tuple[float, ...]]]]:
    """The demo's layout jobs (pixel boxes on the 64 px image) as pipeline regions."""
    rows, boxes = [], []
    for line in LAYOUT_JOBS.read_text().splitlines():
        job = json.loads(line)
        normalised = [tuple(v / 64 for v in box) for box in job["boxes"]]
        rows.append((job["prompt"], job["seed"], {"regions": list(zip(job["phrases"], normalised))}))
        boxes.append(normalised)
    return rows, boxes


def main() -> None:
    figures = {
        "structured-comparison": lambda a: comparison_grid([(p, s, {}) for p, s in PROMPTS], STRUCTURED,
                                                           a.steps, a.guidance),
        "structured-heatmaps": lambda a: heatmaps(a.steps, a.guidance),
        "binding-comparison": lambda a: comparison_grid([(p, s, {}) for p, s in PROMPTS], BINDING, a.steps,
                                                        a.guidance),
        "layout-comparison": lambda a: comparison_grid(*layout_rows()[:1], LAYOUT, a.steps, a.guidance,
                                                       boxes=layout_rows()[1]),
    }
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--only", nargs="+", choices=list(figures), default=list(figures))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        figures[name](args).save(args.out / f"{name}.png")
        print(f"wrote {args.out / name}.png")


if __name__ == "__main__":
    main()
