"""The composition tab through gradio_client: painted or typed regions reach the pipeline; errors are
messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attnctl.app.examples import composer_files
from attnctl.pipelines.composer import PrimeComposerPipeline
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

PROMPT, WORDS = "a blue square and a red circle", "red circle"
TARGET_BOX = (36, 20, 60, 44)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("composer-inputs")
    paths = composer_files(folder)
    for name, box in (("target-paint", TARGET_BOX), ("subject-paint", (20, 20, 44, 44))):
        layer = np.zeros((64, 64, 4), np.uint8)
        layer[box[1] : box[3], box[0] : box[2]] = (255, 59, 48, 255)
        Image.fromarray(layer).save(folder / f"{name}.png")
        paths[name] = str(folder / f"{name}.png")
    return paths


def _editor(image, layer=None):
    return {
        "background": handle_file(image),
        "layers": [handle_file(layer)] if layer else [],
        "composite": None,
    }


def _compose(client, model, background, subject, mask=None, box="", words=WORDS, steps=2):
    return client.predict(
        model,
        background,
        subject,
        mask,
        box,
        PROMPT,
        words,
        "same",
        0.3,
        0.8,
        0.2,
        False,
        5,
        steps,
        2.5,
        api_name="/compose",
    )


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_painted_target_and_subject_mask_match_the_pipeline(client, tiny_sd_path, files):
    composite, masks, details = _compose(
        client,
        str(tiny_sd_path),
        _editor(files["background"], files["target-paint"]),
        _editor(files["subject"], files["subject-paint"]),
    )
    pipe = PrimeComposerPipeline.from_pretrained(tiny_sd_path)
    target = np.zeros((64, 64), bool)
    target[20:44, 36:60] = True
    subject_mask = np.zeros((64, 64), bool)
    subject_mask[20:44, 20:44] = True
    direct = pipe(
        PROMPT,
        image=Image.open(files["background"]).convert("RGB"),
        subject_image=Image.open(files["subject"]).convert("RGB"),
        subject_mask=subject_mask,
        target_mask=target,
        subject_words=WORDS,
        num_inference_steps=2,
        guidance_scale=2.5,
        generator=torch.Generator("cpu").manual_seed(5),
        inversion_token_id=None,
    )
    assert np.array_equal(_pixels(composite), np.asarray(direct.images[0]))
    assert [item["caption"] for item in masks] == ["target box", "box", "subject", "canvas"]
    assert np.array_equal(_pixels(masks[0]["image"])[..., 0] > 127, np.asarray(direct.masks["target"]) > 127)
    assert details["target"] == "painted region" and details["inversion_token_id"] is None


def test_typed_box_and_uploaded_mask_win_over_paint(client, tiny_sd_path, files):
    typed = (8, 8, 32, 40)
    _, masks, details = _compose(
        client,
        str(tiny_sd_path),
        _editor(files["background"], files["target-paint"]),
        _editor(files["subject"], files["subject-paint"]),
        mask=handle_file(files["subject-mask"]),
        box=", ".join(map(str, typed)),
    )
    target = _pixels(masks[0]["image"])[..., 0] > 127
    expected = np.zeros((64, 64), bool)
    expected[typed[1] : typed[3], typed[0] : typed[2]] = True
    assert np.array_equal(target, expected)
    assert details["target"] == "typed box"
    circle_on_canvas = _pixels(masks[3]["image"])[..., 0] > 127
    assert not circle_on_canvas[0, 0] and circle_on_canvas.sum() < expected.sum()  # the round mask, not paint


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"subject": "unpainted"}, "Subject mask is missing: paint over the subject"),
        ({"background": "unpainted"}, "Target is missing: type a box x0, y0, x1, y1, or paint the region"),
        ({"box": "1, 2, 3"}, "Target box is '1, 2, 3': type four numbers"),
        ({"box": "30, 20, 90, 44"}, "lies outside the background image of size 64x64"),
        ({"words": "green circle"}, "subject_words: 'green circle' does not occur in prompt="),
    ],
)
def test_bad_input_is_a_message(client, tiny_sd_path, files, arguments, message):
    background = _editor(
        files["background"], None if arguments.pop("background", None) else files["target-paint"]
    )
    subject = _editor(files["subject"], None if arguments.pop("subject", None) else files["subject-paint"])
    with pytest.raises(AppError) as caught:
        _compose(client, str(tiny_sd_path), background, subject, **arguments)
    assert message in str(caught.value)


def test_a_16_bit_mask_upload_is_scaled_not_clipped(client, tiny_sd_path, files, tmp_path):
    eight = np.asarray(Image.open(files["subject-mask"]).convert("L"))
    sixteen = np.where(eight > 127, 65535, 200).astype(np.uint16)  # 200 / 65535 is black, not subject
    Image.fromarray(sixteen).save(tmp_path / "mask16.png")
    Image.fromarray(np.where(eight > 127, 255, 0).astype(np.uint8)).save(tmp_path / "mask8.png")
    results = [
        _compose(client, str(tiny_sd_path), _editor(files["background"]), _editor(files["subject"]),
                 handle_file(str(tmp_path / name)), box="36, 20, 60, 44")[0]
        for name in ("mask16.png", "mask8.png")
    ]
    assert np.array_equal(_pixels(results[0]), _pixels(results[1]))


@pytest.mark.parametrize("widget", ["Background", "Subject", "Subject mask (optional upload)"])
def test_an_upload_that_is_not_an_image_is_a_message_naming_its_widget(client, tiny_sd_path, files, tmp_path, widget):
    text = tmp_path / "notes.png"
    text.write_text("a text file renamed .png")
    background = _editor(text if widget == "Background" else files["background"], files["target-paint"])
    subject = _editor(text if widget == "Subject" else files["subject"], files["subject-paint"])
    mask = handle_file(str(text)) if widget.startswith("Subject mask") else None
    with pytest.raises(AppError) as caught:
        _compose(client, str(tiny_sd_path), background, subject, mask)
    assert f"{widget}: " in str(caught.value) and "could not be read as an image" in str(caught.value)
    assert "upstream Gradio app" not in str(caught.value)
