"""Layout-guided generation tab: each phrase in a box (typed, or painted on its own layer), with the regional
control's modes (forbid, eDiff-I bias, regional prompts), shown beside the stock image from the same seed with
the boxes drawn over the result."""

from __future__ import annotations

from functools import partial

import gradio as gr
from PIL import Image

from attnctl.methods.regional import LAYOUT_MODES, SPECIAL_MASKS
from attnctl.methods.regional import SPEC as REGIONAL

from ..models import ModelCache, model_event
from ..progress import staged_runs
from ..regions import layer_boxes, phrase_regions
from ..validation import capped, required_text, seeded_generator, spec_values, user_errors
from ..widgets import image_upload, method_tab, result_image, seed_box, steps_slider

#: The tab's controls checked by the method spec (the CLI's job-field checks): param name -> label.
CONTROLS = {"steps": "Steps", "guidance": "Guidance", "layout_mode": "Mode", "layout_strength": "Strength",
            "layout_until": "Fraction of steps", "mask_special": "Drop end-of-text and padding keys",
            "base_ratio": "Base ratio"}
#: The layout-mode controls, passed to the pipeline under their param names.
MODE_CONTROLS = ("layout_mode", "layout_strength", "layout_until", "mask_special", "base_ratio")
CANVAS = 512  # the drawing canvas in pixels; boxes are read as fractions of it, so any model size works
LAYERS = [f"Region {index}" for index in range(1, 5)]
BRUSH_COLOURS = ["#e5484d", "#3e63dd", "#30a46c", "#f5a524"]
EXAMPLES = [  # prompt, regions, seed
    [
        "a red circle and a blue square",
        "a red circle: 0.05, 0.3, 0.45, 0.7\na blue square: 0.55, 0.3, 0.95, 0.7",
        0,
    ],
    [
        "a yellow star and a green triangle",
        "a yellow star: 0.1, 0.05, 0.6, 0.5\na green triangle: 0.4, 0.5, 0.9, 0.95",
        1,
    ],
]


INTRO = (  # the tab's opening paragraph
    "Layout-guided generation. *forbid*: a phrase's tokens may only be attended to from inside its box "
    "(PrimeComposer's region-constrained cross-attention). *bias*: eDiff-I's paint-with-words bias, "
    "positive inside the box and negative outside. *prompts*: each box takes its cross-attention from "
    "its own line as a prompt, mixed with the prompt as base (Regional Prompter). Type a box after a "
    "phrase, or leave it off and paint the phrase's box on its layer (line k: layer *Region k*). "
    "docs/layout.md says what each mode achieves on the embedded model."
)


def pixel_box(box: tuple[float, float, float, float], image: Image.Image) -> tuple[int, int, int, int]:
    """A fractional box in the image's pixels, for drawing it."""
    x0, y0, x1, y1 = box
    return (
        round(x0 * image.width),
        round(y0 * image.height),
        round(x1 * image.width),
        round(y1 * image.height),
    )


def generate(
    models: ModelCache,
    model: str,
    prompt: str,
    negative: str,
    regions_text: str,
    canvas: dict | None,
    seed: float,
    steps: float,
    guidance: float,
    mode: str = "forbid",
    strength: float = 1.0,
    until: float = 1.0,
    mask_special: str = "off",
    base_ratio: float = 0.2,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection)
) -> tuple:
    """Stock and layout-guided images from one seed, the boxes over the result, and the run details.

    In ``prompts`` mode each region line's phrase is that box's own prompt (it need not occur in the prompt)
    and the prompt is the base prompt.
    """
    prompt = required_text(prompt, "Prompt")
    regions = phrase_regions(regions_text, layer_boxes(canvas))
    values = spec_values(REGIONAL, CONTROLS, {
        "steps": steps, "guidance": guidance, "layout_mode": mode, "layout_strength": strength,
        "layout_until": until, "mask_special": mask_special, "base_ratio": base_ratio})
    layout = {name: values[name] for name in MODE_CONTROLS}
    steps = capped(values["steps"], models.limits.max_steps, "Steps", "--max-steps")
    guidance = values["guidance"]
    seeded_generator(seed)  # check the seed before loading anything
    pipe = models.image_pipeline(model, REGIONAL)
    deadline = models.limits.deadline()
    pairs = [(phrase, box) for phrase, box, _ in regions]
    if layout["layout_mode"] != "prompts":
        with user_errors():
            pipe.region_tokens(prompt, pairs)  # a phrase missing from the prompt fails before any denoising
    results, seconds = staged_runs(
        pipe, [("stock", {"regions": None}), ("layout", {"regions": pairs})], progress, steps, deadline, seed,
        prompt=prompt, negative_prompt=negative.strip() or None, **layout, guidance_scale=guidance,
    )
    image = results["layout"].images[0]
    boxes = [(pixel_box(box, image), phrase) for phrase, box, _ in regions]
    details = {
        "model": models.describe(model, REGIONAL),
        "seed": int(seed),
        "steps": steps,
        "guidance_scale": guidance,
        "layout": layout,
        "regions": [
            {"phrase": phrase, "box": [round(v, 4) for v in box], "from": source, "tokens": tokens}
            for (phrase, box, source), tokens in zip(regions, results["layout"].region_tokens)
        ],
        "seconds": seconds,
    }
    return results["stock"].images[0], image, (image, boxes), details


def build(models: ModelCache, model_box: gr.Textbox) -> None:
    """The tab's inputs, outputs and events (API name ``/layout``)."""
    with method_tab("Layout", "layout", INTRO):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle and a blue square")
                with gr.Row():
                    negative = gr.Textbox(label="Negative prompt", placeholder="optional", scale=3)
                    seed = seed_box(scale=1, min_width=100)
                regions = gr.Textbox(
                    label="Regions",
                    lines=3,
                    placeholder="a red circle: 0.05, 0.3, 0.45, 0.7\na blue square",
                    info="One phrase of the prompt per line, then ': x0, y0, x1, y1' as fractions of the "
                    "image (left, top, right, bottom), or nothing to use the box painted on its layer.",
                )
                canvas = image_upload(gr.ImageEditor(
                    value={
                        "background": Image.new("RGB", (CANVAS, CANVAS), "white"),
                        "layers": [],
                        "composite": None,
                    },
                    label="Boxes",
                    type="pil",
                    sources=(),
                    transforms=(),
                    layers=gr.LayerOptions(layers=LAYERS, allow_additional_layers=False),
                    brush=gr.Brush(colors=BRUSH_COLOURS, color_mode="fixed"),
                    canvas_size=(CANVAS, CANVAS),
                    height=320,
                    format="png",
                ))
                with gr.Row():
                    steps = steps_slider(models.limits, 25)
                    guidance = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance")
                mode = gr.Radio(list(LAYOUT_MODES), value="forbid", label=CONTROLS["layout_mode"])
                with gr.Accordion("Mode settings", open=False):
                    with gr.Row():
                        strength = gr.Number(value=1.0, minimum=0, label=CONTROLS["layout_strength"],
                                             info="bias: eDiff-I's w (0.5 measured); guidance: step size (1000)")
                        until = gr.Slider(0.05, 1, value=1.0, step=0.05, label=CONTROLS["layout_until"] + " (bias, guidance)")
                    mask_special = gr.Radio(
                        list(SPECIAL_MASKS), value="off", label=CONTROLS["mask_special"] + " (forbid, bias)",
                        info="They carry the whole prompt to every pixel; drop them inside the boxes or everywhere.",
                    )
                    base_ratio = gr.Slider(0, 1, value=0.2, step=0.05, label=CONTROLS["base_ratio"] + " (prompts)",
                                           info="The prompt's share inside the boxes; each box's line is its prompt.")
                run_button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=3):
                with gr.Row():
                    stock_image = result_image("Stock")
                    layout_image = result_image("Layout-guided")
                boxes = gr.AnnotatedImage(
                    label="Boxes over the layout-guided image", format="png", height=300
                )
                with gr.Accordion("Run details", open=False):
                    details = gr.JSON(label="Run details", show_label=False)
        gr.Examples(EXAMPLES, inputs=[prompt, regions, seed], label="Examples")
    model_event(
        run_button.click, partial(generate, models),
        [model_box, prompt, negative, regions, canvas, seed, steps, guidance, mode, strength, until,
         mask_special, base_ratio],
        [stock_image, layout_image, boxes, details],
        "layout",
    )
