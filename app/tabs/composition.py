"""Composition tab (PrimeComposer): place a subject into a background box; shows the composite and its masks.

The subject's mask is painted over the subject in its editor or uploaded; the target is a typed box or a
region painted on the background (its bounding box is used). A typed box or uploaded mask wins over paint.
"""

from __future__ import annotations

import time
from functools import partial

import gradio as gr
from PIL import Image

from attnctl.composer.config import DOMAINS, ComposerConfig
from attnctl.methods.compose import SPEC as COMPOSE

from ..examples import composer_files
from ..models import ModelCache, model_event
from ..progress import step_progress, time_limited
from ..regions import drawn_mask, editor_background, typed_box
from ..validation import (
    capped,
    required_text,
    seeded_generator,
    spec_values,
    user_error,
    user_errors,
)
from ..widgets import image_upload, method_tab, result_image, seed_box, steps_slider

MASK_CAPTIONS = {  # the pipeline's mask name -> caption
    "target": "target box",
    "box": "box",
    "subject": "subject",
    "reference": "canvas",
}
DEFAULTS = ComposerConfig()
#: The tab's controls checked by the method spec (the CLI's job-field checks): param name -> label.
CONTROLS = {"steps": "Steps", "guidance": "Guidance", "domain": "Domain", "tau_a": "tau_a", "tau_b": "tau_b",
            "tau_c": "tau_c", "faithful": "Faithful to the released code"}


INTRO = (  # the tab's opening paragraph
    "PrimeComposer (Wang et al., ACM MM 2024): the subject is placed in the target box and "
    "harmonised "
    "with attention steering while the rest of the background is kept. Paint the target region on "
    "the background (or type a box) and paint over the subject to mask it (or upload a mask, white "
    "marks the subject)."
)


def compose(
    models: ModelCache,
    model: str,
    background: dict | None,
    subject: dict | None,
    uploaded_mask: Image.Image | None,
    box_text: str,
    prompt: str,
    subject_words: str,
    domain: str,
    tau_a: float,
    tau_b: float,
    tau_c: float,
    faithful: bool,
    seed: float,
    steps: float,
    guidance: float,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection)
) -> tuple:
    """The composite, its masks (gallery of (image, caption)) and the run details."""
    prompt = required_text(prompt, "Prompt")
    words = required_text(subject_words, "Subject words")
    values = spec_values(COMPOSE, CONTROLS, {"steps": steps, "guidance": guidance, "domain": domain,
                                             "tau_a": tau_a, "tau_b": tau_b, "tau_c": tau_c, "faithful": faithful})
    taus = {name: values[name] for name in ("tau_a", "tau_b", "tau_c")}
    steps = capped(values["steps"], models.limits.max_steps, "Steps", "--max-steps")
    guidance, domain, faithful = values["guidance"], values["domain"], values["faithful"]
    seeded_generator(seed)  # check the seed before loading anything
    background_image = editor_background(background, "Background")
    models.limits.check_pixels(*background_image.size, "Background")
    subject_image = editor_background(subject, "Subject")
    subject_mask = uploaded_mask if uploaded_mask is not None else drawn_mask(subject, "Subject")
    if subject_mask is None:
        raise user_error(
            "Subject mask is missing: paint over the subject in the Subject editor, or upload a mask."
        )
    box = typed_box(box_text, "Target box")
    target_mask = None if box is not None else drawn_mask(background, "Background")
    if box is None and target_mask is None:
        raise user_error(
            "Target is missing: type a box x0, y0, x1, y1, or paint the region on the Background."
        )
    pipe = models.get(model, COMPOSE)
    token = pipe.resolve_inversion_token(DEFAULTS.inversion_token_id)  # "auto": shown in the run details
    started = time.perf_counter()
    with time_limited(pipe, models.limits.deadline()), user_errors():
        output = pipe(
            prompt,
            image=background_image,
            subject_image=subject_image,
            subject_mask=subject_mask,
            target_box=box,
            target_mask=target_mask,
            subject_words=words,
            domain=domain,
            faithful=faithful,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=seeded_generator(seed),
            inversion_token_id=token,
            callback_on_step_end=step_progress(progress, "composing", 0, steps),
            **taus,
        )
    details = {
        "model": models.describe(model, COMPOSE),
        "seed": int(seed),
        "steps": steps,
        "guidance_scale": guidance,
        "domain": domain,
        "faithful": faithful,
        **taus,
        "subject_words": words,
        "target": "typed box" if box is not None else "painted region",
        "inversion_token_id": token,
        "size": list(output.images[0].size),
        "seconds": round(time.perf_counter() - started, 3),
    }
    masks = [(output.masks[name].convert("RGB"), caption) for name, caption in MASK_CAPTIONS.items()]
    return output.images[0], masks, details


def editor(label: str) -> gr.ImageEditor:
    """An upload-and-paint editor: one layer, one fixed brush colour (only where is read, not the colour)."""
    return image_upload(gr.ImageEditor(
        label=label,
        type="pil",
        sources=("upload", "clipboard"),
        layers=False,
        transforms=(),
        height=320,
        brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"),
        format="png",
    ))


def build(models: ModelCache, model_box: gr.Textbox) -> None:
    """The tab's inputs, outputs and events (API name ``/compose``)."""
    with method_tab("Composition", "composition", INTRO):
        with gr.Row(equal_height=False):
            with gr.Column(min_width=280):
                background = editor("Background")
                box_text = gr.Textbox(
                    label="Target box",
                    placeholder="x0, y0, x1, y1 in background pixels",
                    info="Typed box wins over the painted region.",
                )
            with gr.Column(min_width=280):
                subject = editor("Subject")
                uploaded_mask = image_upload(gr.Image(
                    label="Subject mask (optional upload)",
                    type="pil",
                    image_mode=None,  # as uploaded: a 16-bit mask is scaled by the pipeline, not clipped here
                    sources=("upload", "clipboard"),
                    height=160,
                ))
            with gr.Column(min_width=280):
                composite = result_image("Composite")
                masks = gr.Gallery(
                    label="Masks used", columns=2, height="auto", format="png", object_fit="contain"
                )
                with gr.Accordion("Run details", open=False):
                    details = gr.JSON(label="Run details", show_label=False)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", scale=3, placeholder="a blue square and a red circle")
            subject_words = gr.Textbox(
                label="Subject words",
                scale=1,
                placeholder="red circle",
                info="Words of the prompt naming the subject.",
            )
        with gr.Row():
            domain = gr.Radio(
                list(DOMAINS),
                value=DEFAULTS.domain,
                label="Domain",
                info="same: photo into photo. cross: e.g. photo into painting.",
            )
            faithful = gr.Checkbox(value=DEFAULTS.faithful, label="Faithful to the released code")
            seed = seed_box()
            steps = steps_slider(models.limits, 20, low=DEFAULTS.solver_order)
            guidance = gr.Slider(0, 20, value=2.5, step=0.5, label="Guidance")
        with gr.Row():
            tau_a = gr.Slider(0, 1, value=DEFAULTS.tau_a, step=0.05, label="tau_a: attention injection")
            tau_b = gr.Slider(0, 1, value=DEFAULTS.tau_b, step=0.05, label="tau_b: background blending")
            tau_c = gr.Slider(0, 1, value=DEFAULTS.tau_c, step=0.05, label="tau_c: subject re-paste")
        run_button = gr.Button("Compose", variant="primary")
        files = composer_files()
        gr.Examples(
            [
                [
                    {"background": files["background"], "layers": [], "composite": files["background"]},
                    {"background": files["subject"], "layers": [], "composite": files["subject"]},
                    files["subject-mask"],
                    "36, 20, 60, 44",
                    "a blue square and a red circle",
                    "red circle",
                    "same",
                ]
            ],
            inputs=[background, subject, uploaded_mask, box_text, prompt, subject_words, domain],
            label="Examples",
            example_labels=["a red circle next to a blue square (typed box)"],
        )
    model_event(
        run_button.click, partial(compose, models),
        [model_box, background, subject, uploaded_mask, box_text, prompt, subject_words, domain, tau_a, tau_b,
         tau_c, faithful, seed, steps, guidance],
        [composite, masks, details],
        "compose",
    )
