"""The shipped CLIP-conditioned model (its size and format: ``test_default_model.py``): stock diffusers loads
it offline and generates, its text encoder is the frozen CLIP text tower, and the ``clip`` alias reaches it
everywhere models are named."""

from __future__ import annotations

import pytest
import torch

from attnctl.cli.common import model_argument
from attnctl.models import default as default_module
from attnctl.models.default import default_model_path
from attnctl.models.training import tokenize
from attnctl.shapes.scene import CAPTION_WORDS


@pytest.fixture(scope="module")
def clip_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(default_model_path("clip"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stock_diffusers_loads_it_and_generates(clip_pipe):
    images = clip_pipe(
        ["a red circle", "a blue square and a green star"], num_inference_steps=2, guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(s) for s in range(2)],
    ).images  # fmt: skip
    assert [image.size for image in images] == [(64, 64)] * 2


def test_text_encoder_is_the_frozen_clip_text_tower(clip_pipe):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(default_model_path("clip") / "clip").eval()
    captions = ["a small orange triangle to the left of a purple star", ""]
    ids = tokenize(clip_pipe.tokenizer, captions)
    with torch.no_grad():
        prompt_embeds, _ = clip_pipe.encode_prompt(captions, "cpu", 1, False)
        assert torch.equal(prompt_embeds, clip.text_model(ids).last_hidden_state)
    for word in CAPTION_WORDS:
        assert len(clip_pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_alias_resolves_for_the_api_cli_and_ui():
    from attnctl.app.models import ModelCache

    path = default_model_path("clip")
    assert path.name == "clip-model" and path == default_model_path()  # the CLIP model is the default
    joint = default_model_path("joint")
    assert joint.name == "joint-model" and joint != path
    assert model_argument("clip") == model_argument("default") == model_argument(None) == str(path)
    assert model_argument("joint") == str(joint)
    assert ModelCache().resolve(" clip ").source == str(path)
    assert ModelCache().resolve("joint").source == str(joint)


def test_bad_aliases_and_missing_models_say_what_is_wrong(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="model alias 'sd15': embedded models are 'default', 'clip', 'joint'"):
        default_model_path("sd15")
    monkeypatch.setattr(default_module, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_clip_model.py --export attnctl/assets/clip-model"):
        default_model_path("clip")
    with pytest.raises(ValueError, match="train_clip_model.py.*; or pass --model"):
        model_argument("clip")
