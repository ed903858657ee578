"""Structured text-to-image tab: stock, Structured Diffusion Guidance, Attend-and-Excite and SynGen from one seed,
each with its heat maps.

The phrases spaCy finds are shown in an editable box (one per line); whatever the box holds when Generate
is pressed is what gets encoded, and an empty box means "parse the prompt". Generate draws stock and
structured (API ``/structured``), then the two binding methods from the same seed (API ``/binding``), which
take their subjects and modifier-noun pairs from the same parse; they alter the first half of the steps, as
the papers do (25 of 50).
"""

from __future__ import annotations

import time
from functools import partial

import gradio as gr

from attnctl.methods.attend_excite import SPEC as ATTEND_EXCITE
from attnctl.methods.structured import SPEC as STRUCTURED
from attnctl.methods.syngen import SPEC as SYNGEN
from attnctl.structured import STRUCT_MODES

from ..heatmaps import token_overlays
from ..models import MODEL_QUEUE, ModelCache, model_event
from ..progress import progress_callback, staged_runs, step_progress, time_limited
from ..validation import (
    capped,
    phrase_lines,
    required_text,
    seeded_generator,
    spec_values,
    user_error,
    user_errors,
)
from ..widgets import method_tab, result_image, seed_box, steps_slider

#: The tab's controls checked by the method spec (the CLI's job-field checks): param name -> label.
CONTROLS = {"steps": "Steps", "guidance": "Guidance", "struct_mode": "Mode"}
EXAMPLES = [  # prompt, phrases (empty: parse), mode, seed
    ["a red circle and a blue square", "", "values", 0],
    ["a yellow star to the left of a green triangle", "", "values", 1],
    [
        "a small purple square above a large orange circle",
        "a small purple square\na large orange circle",
        "keys",
        2,
    ],
]


INTRO = (  # the tab's opening paragraph
    "Noun phrases of the prompt are encoded on their own and fed to every cross-attention layer "
    "(Feng et al., ICLR 2023). Attend-and-Excite (Chefer et al., 2023) strengthens the most neglected "
    "subject's attention and SynGen (Rassin et al., 2023) pulls each modifier's attention onto its noun, "
    "both by moving the latents in the first half of the steps. All four images use the same seed; "
    "below each, where every prompt token attended (cross-attention averaged over layers, heads and steps)."
)


def parse(models: ModelCache, model: str, prompt: str) -> str:
    """The prompt's phrases as the pipeline would encode them, one per line, for the phrases box."""
    pipe = models.get(model, STRUCTURED)
    with user_errors():
        try:
            phrases = pipe.parse_phrases(required_text(prompt, "Prompt"))
        except RuntimeError as err:  # no English spaCy pipeline installed
            raise user_error(f"{err}; type the phrases yourself, one per line") from None
    return "\n".join(p.text for p in phrases)


def generate(
    models: ModelCache,
    model: str,
    prompt: str,
    negative: str,
    phrases: str,
    mode: str,
    seed: float,
    steps: float,
    guidance: float,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection)
) -> tuple:
    """Stock and structured images from the same seed, their per-token heat-map galleries, the phrases
    used and the run details."""
    prompt = required_text(prompt, "Prompt")
    values = spec_values(STRUCTURED, CONTROLS, {"steps": steps, "guidance": guidance, "struct_mode": mode})
    steps = capped(values["steps"], models.limits.max_steps, "Steps", "--max-steps")
    guidance = values["guidance"]
    given = phrase_lines(phrases)
    seeded_generator(seed)  # check the seed before loading anything
    pipe = models.image_pipeline(model, STRUCTURED)
    deadline = models.limits.deadline()
    if given is not None:
        with user_errors():
            pipe.parse_phrases(prompt, given)  # a phrase missing from the prompt fails before any denoising
    stages = [("stock", {"struct_mode": None, "phrases": None}),
              ("structured", {"struct_mode": mode, "phrases": given})]
    results, seconds = staged_runs(
        pipe, stages, progress, steps, deadline, seed, prompt=prompt, negative_prompt=negative.strip() or None,
        return_attention_maps=True, guidance_scale=guidance,
    )
    stock, structured = results["stock"], results["structured"]
    used = structured.phrases[0]
    details = {
        "model": models.describe(model, STRUCTURED),
        "seed": int(seed),
        "steps": steps,
        "guidance_scale": guidance,
        "mode": mode,
        "phrases": [{"text": p.text, "tokens": [p.token_start, p.token_end]} for p in used],
        "tokens": structured.attention_maps[0].tokens,
        "seconds": seconds,
    }
    return (
        stock.images[0],
        structured.images[0],
        token_overlays(stock.images[0], stock.attention_maps[0]),
        token_overlays(structured.images[0], structured.attention_maps[0]),
        "\n".join(p.text for p in used),
        details,
    )


def generate_binding(
    models: ModelCache,
    model: str,
    prompt: str,
    negative: str,
    seed: float,
    steps: float,
    guidance: float,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection)
) -> tuple:
    """Attend-and-Excite and SynGen images from the seed of the structured pair, their heat-map galleries and
    what each bound (subject tokens; modifier-noun sets) with the run details."""
    prompt = required_text(prompt, "Prompt")
    values = spec_values(STRUCTURED, CONTROLS, {"steps": steps, "guidance": guidance, "struct_mode": "values"})
    steps = capped(values["steps"], models.limits.max_steps, "Steps", "--max-steps")
    seeded_generator(seed)
    deadline = models.limits.deadline()
    methods = (("Attend-and-Excite", ATTEND_EXCITE, {"max_iter_to_alter": steps // 2}),
               ("SynGen", SYNGEN, {"num_intervention_steps": steps // 2}))
    results, seconds = [], {}
    for index, (stage, spec, arguments) in enumerate(methods):
        pipe = models.get(model, spec)
        started = time.perf_counter()
        with time_limited(pipe, deadline), user_errors():
            results.append(pipe(
                prompt, negative_prompt=negative.strip() or None, return_attention_maps=True,
                generator=seeded_generator(seed), num_inference_steps=steps, guidance_scale=values["guidance"],
                **progress_callback(pipe, step_progress(progress, stage, index * steps, 2 * steps)), **arguments,
            ))
        seconds[stage] = round(time.perf_counter() - started, 3)
    excite, syngen = results
    tokens = excite.attention_maps[0].tokens
    before = pipe.special_tokens()[0]  # key position of the first word: 1 after CLIP's start token, 0 for T5
    details = {
        "model": models.describe(model, ATTEND_EXCITE),
        "seed": int(seed),
        "subjects": [[tokens[i - before] for i in subject] for subject in excite.token_indices[0]],
        "modifier_sets": [{"noun": s.noun.text, "modifiers": [m.text for m in s.modifiers]}
                          for s in syngen.modifier_sets[0]],
        "seconds": seconds,
    }
    return (
        excite.images[0], syngen.images[0],
        token_overlays(excite.images[0], excite.attention_maps[0]),
        token_overlays(syngen.images[0], syngen.attention_maps[0]),
        details,
    )


def heatmap_gallery(label: str) -> gr.Gallery:
    """One heat-map overlay per prompt token, captioned with the token."""
    return gr.Gallery(
        label=label, columns=3, height="auto", format="png", object_fit="contain", elem_classes="heatmaps"
    )


def result_with_maps(label: str) -> tuple[gr.Image, gr.Gallery]:
    """A column: one method's image and, below it, where every prompt token attended."""
    with gr.Column(min_width=240):
        return result_image(label), heatmap_gallery(f"{label}: attention per token")


def build(models: ModelCache, model_box: gr.Textbox) -> None:
    """The tab's inputs, outputs and events (API names ``/structured`` and ``/parse_phrases``)."""
    with method_tab("Structured text-to-image", "structured", INTRO):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle and a blue square")
                negative = gr.Textbox(label="Negative prompt", placeholder="optional")
                phrases = gr.Textbox(
                    label="Phrases",
                    lines=3,
                    info="Encoded separately, one per line; each must occur in the prompt. "
                    "Empty: parse the prompt.",
                )
                parse_button = gr.Button("Parse phrases from the prompt", size="sm")
                with gr.Row():
                    mode = gr.Radio(
                        list(STRUCT_MODES),
                        value="values",
                        label="Mode",
                        scale=2,
                        info="values: one key, many values (paper default). keys: many keys, one value.",
                    )
                    seed = seed_box(scale=1, min_width=100)
                with gr.Row():
                    steps = steps_slider(models.limits, 25)
                    guidance = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance")
                run_button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=3):
                with gr.Row():
                    stock_image, stock_maps = result_with_maps("Stock")
                    structured_image, structured_maps = result_with_maps("Structured")
                with gr.Row():
                    excite_image, excite_maps = result_with_maps("Attend-and-Excite")
                    syngen_image, syngen_maps = result_with_maps("SynGen")
                with gr.Accordion("Run details", open=False):
                    details = gr.JSON(label="Run details", show_label=False)
                    binding_details = gr.JSON(label="Binding methods", show_label=False)
        gr.Examples(EXAMPLES, inputs=[prompt, phrases, mode, seed], label="Examples")

    parse_event = dict(
        fn=partial(parse, models), inputs=[model_box, prompt], outputs=phrases, concurrency_id=MODEL_QUEUE
    )
    parse_button.click(**parse_event, api_name="parse_phrases")
    prompt.submit(**parse_event, api_visibility="private")
    structured_run = model_event(
        run_button.click, partial(generate, models),
        [model_box, prompt, negative, phrases, mode, seed, steps, guidance],
        [stock_image, structured_image, stock_maps, structured_maps, phrases, details],
        "structured",
    )
    model_event(
        structured_run.success, partial(generate_binding, models),
        [model_box, prompt, negative, seed, steps, guidance],
        [excite_image, syngen_image, excite_maps, syngen_maps, binding_details],
        "binding",
    )
