"""What diffusers users combine keeps working with every control: IP-Adapter, LoRA (with its scale), clip_skip
and prompt_embeds, on SD 1.x/2.x and SDXL. Control off is the parent pipeline with the same additions, bit for
bit; control on is a different, finite image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attnctl.pipelines.base import parent_pipeline
from tiny_adapters import add_tiny_lora, load_tiny_ip_adapter, write_tiny_ip_adapter

from attnctl import RegionalDiffusionPipeline, StructuredDiffusionPipeline

PROMPT = "a red car next to a blue bench"
CONTROLS = {
    StructuredDiffusionPipeline: ({"phrases": ["a red car", "a blue bench"]}, {"struct_mode": None}),
    RegionalDiffusionPipeline: ({"regions": [("red car", (0, 0, 0.5, 1)), ("blue bench", (0.5, 0, 1, 1))]},
                                {"regions": None}),
}
IMAGE = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def _pair(method, path, prepare):
    pipes = []
    for cls in (method, None):
        pipe = (method if cls else parent_pipeline(type(pipes[0]))).from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        prepare(pipe)
        pipes.append(pipe)
    return pipes


def _run(pipe, **kwargs):
    arguments = dict(prompt=PROMPT, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    return pipe(**arguments | kwargs).images


def _check(method, pipe, stock, **kwargs):
    on, off = CONTROLS[method]
    expected = _run(stock, **kwargs)
    assert torch.equal(_run(pipe, **off, **kwargs), expected)
    images = _run(pipe, **on, **kwargs)
    assert torch.isfinite(images).all() and not torch.equal(images, expected)
    assert {type(p).__module__.split(".")[0] for p in pipe.unet.attn_processors.values()} == {"diffusers"}


FAMILIES = ["tiny_sd_path", "tiny_sdxl_path"]


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", FAMILIES)
def test_ip_adapter(method, fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    folder = None

    def prepare(pipe):
        nonlocal folder
        folder = folder or write_tiny_ip_adapter(pipe.unet, tmp_path / "ip")
        load_tiny_ip_adapter(pipe, folder)

    pipe, stock = _pair(method, path, prepare)
    _check(method, pipe, stock, ip_adapter_image=IMAGE)


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", FAMILIES)
def test_lora_with_its_scale(method, fixture, request):
    pipe, stock = _pair(method, request.getfixturevalue(fixture), add_tiny_lora)
    _check(method, pipe, stock, cross_attention_kwargs={"scale": 0.5})


@pytest.mark.parametrize("method", list(CONTROLS))
def test_clip_skip_on_sdxl(method, tiny_sdxl_path):
    # SD 1.x/2.x's encode_prompt reads text_encoder.text_model, which transformers 5 removed: the stock
    # StableDiffusionPipeline fails there with clip_skip, and so do attnctl's variants (same code path)
    pipe, stock = _pair(method, tiny_sdxl_path, lambda pipe: None)
    _check(method, pipe, stock, clip_skip=1)


@pytest.mark.parametrize("fixture", FAMILIES)
def test_regions_with_prompt_embeds_and_explicit_positions(fixture, request):
    pipe, stock = _pair(RegionalDiffusionPipeline, request.getfixturevalue(fixture), lambda pipe: None)
    encoded = stock.encode_prompt(prompt=PROMPT, device=torch.device("cpu"), num_images_per_prompt=1,
                                  do_classifier_free_guidance=True)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    embeds = dict(zip(names, encoded))
    out = _run(pipe, regions=[([2, 3], (0, 0, 0.5, 1))], **embeds | {"prompt": None})
    assert torch.equal(out, _run(pipe, regions=[("red car", (0, 0, 0.5, 1))]))
    with pytest.raises(ValueError, match="names a phrase, which needs the prompt text"):
        _run(pipe, regions=[("red car", (0, 0, 0.5, 1))], **embeds | {"prompt": None})
