"""The embedded default model: it ships, loads with ``from_pretrained`` and draws the shape it is asked for."""

from __future__ import annotations

import json

import pytest
import torch

from attnctl.models import default as default_module
from attnctl.models.default import default_model_path
from attnctl.shapes.checker import detect_shapes
from attnctl.shapes.evaluation import held_out_binding_prompts, held_out_single_prompts

MAX_BYTES = 25 * 1024 * 1024


@pytest.mark.parametrize("alias", ["default", "joint"])
def test_shipped_model_is_small_safetensors(alias):
    path = default_model_path(alias)
    files = [f for f in path.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= MAX_BYTES
    weights = [f for f in files if f.suffix in {".safetensors", ".bin", ".pt", ".ckpt"}]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


@pytest.fixture(scope="module")
def default_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(default_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_default_model_draws_a_red_circle(default_pipe):
    prompt = "a large red circle"
    images = default_pipe(
        [prompt] * 4, generator=[torch.Generator().manual_seed(s) for s in range(4)],
        num_inference_steps=20, guidance_scale=4.0,
    ).images  # fmt: skip
    assert images[0].size == (64, 64)
    drawn = [any((d.colour, d.shape) == ("red", "circle") for d in detect_shapes(image)) for image in images]
    assert sum(drawn) >= 3, drawn


def test_evaluation_prompts_fit_the_text_encoder_untruncated(default_pipe):
    tokenizer = default_pipe.tokenizer
    prompts = [p.prompt for p in held_out_binding_prompts() + held_out_single_prompts()]
    lengths = [len(ids) for ids in tokenizer(prompts).input_ids]
    assert (
        max(lengths) <= default_pipe.text_encoder.config.max_position_embeddings == tokenizer.model_max_length
    )
    ids = tokenizer(prompts[0], add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == prompts[0]


def test_missing_model_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(default_module, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_clip_model.py --export attnctl/assets/clip-model"):
        default_model_path()
    with pytest.raises(FileNotFoundError, match="train_joint_model.py --export attnctl/assets/joint-model"):
        default_model_path("joint")
