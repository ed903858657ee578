"""The FreeSwim tab through gradio_client on the tiny Wan model: both videos return; errors are messages."""

from __future__ import annotations

import pytest
from diffusers.utils import export_to_video, load_video
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

SIZES = (48, 48, 32, 32)  # target height, width; native height, width


def _shape(path) -> tuple[int, int, int]:
    """(frames, height, width) of an mp4."""
    frames = load_video(path)
    return len(frames), frames[0].height, frames[0].width


def _freeswim(client, model, video=None, sizes=SIZES, frames=5, prompt="a red car"):
    return client.predict(
        model, prompt, "", video, *sizes, frames, 2, 5.0, 0.7, 2, True, 0, api_name="/freeswim"
    )


def test_text_to_video_returns_the_refined_and_native_videos(client, tiny_wan_path):
    refined, native, details = _freeswim(client, str(tiny_wan_path))
    assert _shape(refined) == (5, 48, 48)
    assert _shape(native) == (5, 32, 32)
    assert details["source"] == "generated" and details["refine_steps"] == 1


def test_an_uploaded_video_is_upscaled_and_shown_as_the_native_stage(client, tiny_wan_path, tmp_path):
    upload = tmp_path / "upload.mp4"
    export_to_video([Image.new("RGB", (32, 32), (40 * i, 80, 160)) for i in range(5)], str(upload), fps=8)
    refined, native, details = _freeswim(client, str(tiny_wan_path), video=handle_file(str(upload)))
    assert _shape(refined) == (5, 48, 48)
    assert native.endswith("upload.mp4") and details["source"] == "uploaded video"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"model": ""}, "Video model is empty: FreeSwim needs a Wan text-to-video model"),
        ({"sizes": (40, 48, 32, 32)}, "height=40 is invalid: expected a multiple of 16"),
        ({"frames": 6}, "num_frames=6 must be 4k+1"),
        ({"prompt": " "}, "Prompt is empty"),
    ],
)
def test_bad_input_is_a_message(client, tiny_wan_path, arguments, message):
    with pytest.raises(AppError) as caught:
        _freeswim(client, arguments.pop("model", str(tiny_wan_path)), **arguments)
    assert message in str(caught.value)
