"""Render the README's structured-guidance figures from the embedded default model.

    python scripts/make_readme_images.py [--out docs/images] [--steps 20] [--guidance 4]

Writes ``structured-comparison.png`` (rows: prompts; columns: stock, values, keys from one seed) and
``structured-heatmaps.png`` (per-token attention maps of one structured image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from attnctl import StructuredDiffusionPipeline
from attnctl.models.default import default_model_path

PROMPTS = [
    ("a red circle and a blue square", 3),
    ("a yellow star and a green triangle", 1),
    ("a purple square and an orange circle", 2),
    ("a small blue triangle to the left of a large red star", 4),
]
MODES = [("stock", None), ("values", "values"), ("keys", "keys")]
SCALE = 2


def _label(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 14), "white")
    canvas.paste(image, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), text, fill="black")
    return canvas


def _row(images: list[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        row.paste(image, (x, 0))
        x += image.width
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = StructuredDiffusionPipeline.from_pretrained(default_model_path())
    pipe.set_progress_bar_config(disable=True)

    rows = []
    for prompt, seed in PROMPTS:
        cells = []
        for name, mode in MODES:
            image = pipe(prompt, struct_mode=mode, generator=torch.Generator().manual_seed(seed),
                         num_inference_steps=args.steps, guidance_scale=args.guidance).images[0]
            cells.append(_label(image.resize((image.width * SCALE, image.height * SCALE)), name))
        rows.append(_label(_row(cells), prompt))
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height
    grid.save(args.out / "structured-comparison.png")

    prompt, seed = PROMPTS[0]
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=args.steps,
               guidance_scale=args.guidance, return_attention_maps=True)
    heat = out.attention_maps[0]
    base = np.asarray(out.images[0], dtype=np.float32) / 255.0
    tiles = [_label(out.images[0].resize((128, 128)), "image")]
    for token, mask in zip(heat.tokens, heat.normalized().numpy()):
        overlay = 0.45 * base + 0.55 * np.stack([mask, 0.2 * mask, 1.0 - mask], axis=-1)
        tile = Image.fromarray((overlay.clip(0, 1) * 255).astype(np.uint8)).resize((128, 128))
        tiles.append(_label(tile, token))
    _row(tiles).save(args.out / "structured-heatmaps.png")
    print(f"wrote {args.out / 'structured-comparison.png'} and {args.out / 'structured-heatmaps.png'}")


if __name__ == "__main__":
    main()
