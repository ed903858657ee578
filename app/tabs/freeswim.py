"""FreeSwim video tab: Wan text-to-video (or an uploaded video) refined above the native size, both shown.

FreeSwim needs a Wan text-to-video model, so this tab reads the picker's video model box; the image model
(the embedded default) cannot make videos.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from functools import partial
from pathlib import Path

import gradio as gr
from diffusers.utils import export_to_video, load_video

from attnctl import FreeSwimPipeline
from attnctl.checks import MAX_SIDE
from attnctl.methods.freeswim import SPEC as FREESWIM

from ..examples import moving_circle_video
from ..models import ModelCache, model_event
from ..progress import step_progress, time_limited
from ..validation import (
    capped,
    required_text,
    seeded_generator,
    spec_values,
    user_error,
    user_errors,
    whole_number,
)
from ..widgets import method_tab, seed_box, steps_slider

DEFAULTS = {name: p.default for name, p in inspect.signature(FreeSwimPipeline.__call__).parameters.items()}
FPS = 16  # Wan 2.1's frame rate
#: The tab's controls checked by the method spec (the CLI's job-field checks): param name -> label.
CONTROLS = {"frames": "Frames", "steps": "Steps", "guidance": "Guidance", "strength": "Strength",
            "cache_interval": "Cache interval", "dual_path": "Dual path"}


INTRO = (  # the tab's opening paragraph
    "FreeSwim (Wu et al., 2025): a Wan video made at the model's native size (or your upload) is "
    "refined at the target size with inward sliding-window attention and a cached full-attention "
    "branch."
)


def write_mp4(frames: list, name: str) -> str:
    """``frames`` (PIL images) as an mp4 in a fresh temporary folder; Gradio serves it from there."""
    path = Path(tempfile.mkdtemp(prefix="attnctl-ui-")) / f"{name}.mp4"
    export_to_video(frames, str(path), fps=FPS)
    return str(path)


def read_video(path: str) -> list:
    """The frames of an uploaded video; a file that is not one is a message, not a server error."""
    try:
        return load_video(path)
    except Exception as err:  # any upload can arrive here: every decoding failure means "not a video"
        raise user_error(f"Video to upscale could not be read as a video ({type(err).__name__}); upload an "
                         "mp4, webm or gif with 4k+1 frames") from None


def upscale(
    models: ModelCache,
    video_model: str,
    prompt: str,
    negative: str,
    video: str | None,
    height: float,
    width: float,
    native_height: float,
    native_width: float,
    num_frames: float,
    steps: float,
    guidance: float,
    strength: float,
    cache_interval: float,
    dual_path: bool,
    seed: float,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection)
) -> tuple:
    """The refined video, the native-size video it came from (generated or uploaded) and the run details."""
    if not (video_model or "").strip():
        raise user_error(
            "Video model is empty: FreeSwim needs a Wan text-to-video model; type its diffusers folder or "
            "hub id "
            "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) in the Video model box."
        )
    prompt = required_text(prompt, "Prompt")
    sizes = {
        name: whole_number(value, label, 1, MAX_SIDE)
        for name, value, label in (
            ("height", height, "Target height"),
            ("width", width, "Target width"),
            ("native_height", native_height, "Native height"),
            ("native_width", native_width, "Native width"),
        )
    }
    values = spec_values(FREESWIM, CONTROLS, {
        "frames": num_frames, "steps": steps, "guidance": guidance, "strength": strength,
        "cache_interval": cache_interval, "dual_path": dual_path,
    })
    limits = models.limits
    num_frames = capped(values["frames"], limits.max_frames, "Frames", "--max-frames")
    steps = capped(values["steps"], limits.max_steps, "Steps", "--max-steps")
    guidance, strength, cache_interval, dual_path = (values[k] for k in ("guidance", "strength", "cache_interval",
                                                                          "dual_path"))
    limits.check_pixels(sizes["width"], sizes["height"], "The target size")
    seeded_generator(seed)  # check the seed before loading anything
    frames_in = read_video(video) if video else None
    pipe = models.get(video_model, FREESWIM)
    progress(0.0, desc="native-size stage" if frames_in is None else "encoding the video")
    started = time.perf_counter()
    with time_limited(pipe, limits.deadline()), user_errors():
        output = pipe(
            prompt,
            negative_prompt=negative.strip() or None,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=seeded_generator(seed),
            video=frames_in,
            strength=strength,
            cache_interval=cache_interval,
            dual_path=dual_path,
            output_type="pil",
            callback_on_step_end=step_progress(progress, "refining at the target size"),
            **sizes,
        )
    seconds = round(time.perf_counter() - started, 3)
    refined = write_mp4(output.frames[0], "freeswim")
    native = video if output.native_frames is None else write_mp4(output.native_frames[0], "native")
    details = {
        "model": models.describe(video_model, FREESWIM),
        "seed": int(seed),
        **sizes,
        "frames": len(output.frames[0]),
        "steps": steps,
        "refine_steps": pipe.num_timesteps,
        "guidance_scale": guidance,
        "strength": strength,
        "cache_interval": cache_interval,
        "dual_path": dual_path,
        "source": "generated" if frames_in is None else "uploaded video",
        "seconds": seconds,
    }
    return refined, native, details


def build(models: ModelCache, video_model_box: gr.Textbox) -> None:
    """The tab's inputs, outputs and events (API name ``/freeswim``)."""
    with method_tab("FreeSwim video", "freeswim", INTRO):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(
                    label="Prompt", lines=2, placeholder="a red circle rolling across a white floor"
                )
                negative = gr.Textbox(label="Negative prompt", placeholder="optional")
                video = gr.Video(
                    label="Video to upscale (optional: skips the native-size stage)",
                    sources=["upload"],
                    height=160,
                )
                with gr.Row():
                    height = gr.Number(label="Target height", value=DEFAULTS["height"], precision=0)
                    width = gr.Number(label="Target width", value=DEFAULTS["width"], precision=0)
                with gr.Row():
                    native_height = gr.Number(
                        label="Native height", value=DEFAULTS["native_height"], precision=0
                    )
                    native_width = gr.Number(
                        label="Native width", value=DEFAULTS["native_width"], precision=0
                    )
                with gr.Row():
                    num_frames = gr.Number(label="Frames (4k+1)", value=DEFAULTS["num_frames"], precision=0)
                    seed = seed_box()
                with gr.Row():
                    steps = steps_slider(models.limits, DEFAULTS["num_inference_steps"])
                    guidance = gr.Slider(0, 20, value=DEFAULTS["guidance_scale"], step=0.5, label="Guidance")
                with gr.Row():
                    strength = gr.Slider(
                        0.05,
                        1,
                        value=DEFAULTS["strength"],
                        step=0.05,
                        label="Strength",
                        info="How far the upscaled video is re-noised.",
                    )
                    cache_interval = gr.Number(
                        value=DEFAULTS["cache_interval"],
                        precision=0,
                        minimum=FREESWIM.all_params["cache_interval"].kind.low,
                        maximum=FREESWIM.all_params["cache_interval"].kind.high,
                        label="Cache interval",
                        info="Full branch every k steps (1: uncached).",
                    )
                dual_path = gr.Checkbox(
                    value=DEFAULTS["dual_path"], label="Dual path (full-attention branch)"
                )
                run_button = gr.Button("Generate video", variant="primary")
            with gr.Column(scale=3):
                with gr.Row():
                    refined = gr.Video(label="FreeSwim at the target size", interactive=False, height=300)
                    native = gr.Video(label="Native-size stage", interactive=False, height=300)
                with gr.Accordion("Run details", open=False):
                    details = gr.JSON(label="Run details", show_label=False)
        gr.Examples(
            [
                ["a red car driving along a coastal road at sunset", None, 720, 1280, 480, 832, 81],
                ["a red circle rolling across a white floor", moving_circle_video(), 128, 128, 64, 64, 17],
            ],
            inputs=[prompt, video, height, width, native_height, native_width, num_frames],
            label="Examples",
        )
    model_event(
        run_button.click, partial(upscale, models),
        [video_model_box, prompt, negative, video, height, width, native_height, native_width, num_frames,
         steps, guidance, strength, cache_interval, dual_path, seed],
        [refined, native, details],
        "freeswim",
    )
