"""The server's caps: steps, pixels, frames and time are refused or stopped with a message naming the flag."""

from __future__ import annotations

import gradio as gr
import pytest
from attnctl.app.limits import Limits, is_remote
from attnctl.app.models import ModelCache
from attnctl.app.tabs import freeswim, structured


def _structured(models, model, steps=2):
    return structured.generate(models, model, "a red circle and a blue square", "", "a red circle", "values", 0,
                               steps, 5.0, progress=lambda *args, **kwargs: None)


def test_steps_and_pixels_past_the_caps_are_refused_before_anything_runs(tiny_sd_path):
    with pytest.raises(gr.Error, match=r"Steps is 3: this server allows at most 2 \(started with `attnctl ui "
                                       r"--max-steps 2`"):
        _structured(ModelCache(limits=Limits(max_steps=2)), str(tiny_sd_path), steps=3)
    with pytest.raises(gr.Error, match=r"The model's image size is 64x64 = 4096 pixels: this server allows at most "
                                       r"1024 \(started with `attnctl ui --max-pixels 1024`\)"):
        _structured(ModelCache(limits=Limits(max_pixels=1024)), str(tiny_sd_path))


def test_a_request_past_the_time_limit_stops_at_the_next_step(tiny_sd_path):
    models = ModelCache(limits=Limits(time_limit=1e-9))
    with pytest.raises(gr.Error, match="ran past the server's time limit of 1e-09 s and was stopped"):
        _structured(models, str(tiny_sd_path))
    pipe = models.get(str(tiny_sd_path), structured.STRUCTURED)
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}  # stock ones restored


def test_frames_past_the_cap_are_refused(tiny_wan_path):
    models = ModelCache(limits=Limits(max_frames=5))
    with pytest.raises(gr.Error, match="Frames is 9: this server allows at most 5"):
        freeswim.upscale(models, str(tiny_wan_path), "a cat", "", None, 64, 64, 32, 32, 9, 2, 5.0, 0.7, 2, True, 0,
                         progress=lambda *args, **kwargs: None)


@pytest.mark.parametrize(("host", "share", "remote"), [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False), ("127.0.0.2", False, False),
    ("0.0.0.0", False, True), ("192.168.1.4", False, True), ("myhost", False, True), ("127.0.0.1", True, True),
])
def test_remote_is_anything_beyond_this_machine(host, share, remote):
    assert is_remote(host, share) is remote


@pytest.mark.parametrize("field", ["max_pixels", "max_steps", "concurrency", "max_models"])
def test_caps_are_positive_whole_numbers(field):
    with pytest.raises(ValueError, match=f"{field}=0 is invalid"):
        Limits(**{field: 0})
