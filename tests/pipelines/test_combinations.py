"""What diffusers users combine keeps working with every control: IP-Adapter, LoRA (with its scale), clip_skip
and prompt_embeds, on every text-to-image family whose diffusers pipeline offers them (docs/families.md,
"Combinations"). Control off is the parent pipeline with the same additions, bit for bit; control on is a
different, finite image. On Wan, FreeSwim's first stage is the stock ``WanPipeline`` with the same additions.
``callback_on_step_end`` and ``enable_model_cpu_offload`` of the image families are in the pipeline contract
(tests/pipelines/contract.py), run for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attnctl.pipelines.base import parent_pipeline
from safetensors.torch import save_file
from tiny_adapters import add_tiny_lora, load_tiny_ip_adapter, write_tiny_ip_adapter

from attnctl import RegionalDiffusionPipeline, StructuredDiffusionPipeline
from attnctl.models import tiny_ip_adapters
from attnctl.models.tiny_families import TINY_MAX_SEQUENCE_LENGTH

PROMPT = "a red car next to a blue bench"
CONTROLS = {
    StructuredDiffusionPipeline: ({"phrases": ["a red car", "a blue bench"]}, {"struct_mode": None}),
    RegionalDiffusionPipeline: ({"regions": [("red car", (0, 0, 0.5, 1))]}, {"regions": None}),
}
IMAGE = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
T5 = {"max_sequence_length": TINY_MAX_SEQUENCE_LENGTH, "height": 32, "width": 32}
# every call of a family's tiny folder passes these (the T5 stand-in's length; Flux defaults to 256 px)
CALL = {"tiny_sd_path": {}, "tiny_sdxl_path": {}, "tiny_sd3_path": T5, "tiny_flux_path": T5,
        "tiny_pixart_path": T5 | {"clean_caption": False, "use_resolution_binning": False}}  # fmt: skip
UNET_FAMILIES = ["tiny_sd_path", "tiny_sdxl_path"]
JOINT_FAMILIES = ["tiny_sd3_path", "tiny_flux_path"]


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
    assert {type(p).__module__.split(".")[0] for p in pipe.denoiser.attn_processors.values()} == {"diffusers"}


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", UNET_FAMILIES)
def test_ip_adapter(method, fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    folder = None

    def prepare(pipe):
        nonlocal folder
        folder = folder or write_tiny_ip_adapter(pipe.unet, tmp_path / "ip")
        load_tiny_ip_adapter(pipe, folder)

    pipe, stock = _pair(method, path, prepare)
    _check(method, pipe, stock, ip_adapter_image=IMAGE)


@pytest.fixture(scope="module")
def joint_ip_adapter(tmp_path_factory):
    """``folder(fixture, transformer)``: a tiny IP-Adapter folder for that family, written once per module."""
    writers = {"tiny_sd3_path": tiny_ip_adapters.write_tiny_sd3_ip_adapter,
               "tiny_flux_path": tiny_ip_adapters.write_tiny_flux_ip_adapter}  # fmt: skip
    folders = {}

    def folder(fixture, transformer):
        if fixture not in folders:
            folders[fixture] = writers[fixture](transformer, tmp_path_factory.mktemp("ip"))
        return folders[fixture]

    return folder


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", JOINT_FAMILIES)
def test_ip_adapter_on_joint_attention(method, fixture, request, joint_ip_adapter):
    def prepare(pipe):
        tiny_ip_adapters.load_tiny_ip_adapter(pipe, joint_ip_adapter(fixture, pipe.transformer))

    pipe, stock = _pair(method, request.getfixturevalue(fixture), prepare)
    _check(method, pipe, stock, ip_adapter_image=IMAGE, **CALL[fixture])
    # the adapter takes part: at scale 0 the stock image differs
    stock.set_ip_adapter_scale(0.0)
    assert not torch.equal(_run(stock, ip_adapter_image=IMAGE, **CALL[fixture]),
                           _run(pipe, ip_adapter_image=IMAGE, **CONTROLS[method][1], **CALL[fixture]))  # fmt: skip


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", UNET_FAMILIES)
def test_lora_with_its_scale(method, fixture, request):
    pipe, stock = _pair(method, request.getfixturevalue(fixture), add_tiny_lora)
    _check(method, pipe, stock, cross_attention_kwargs={"scale": 0.5})


def write_tiny_transformer_lora(transformer, directory, seed: int = 0):
    """A random rank-2 LoRA on every attention projection of ``transformer``, in the peft/diffusers layout
    (``transformer.<module>.lora_A.weight``) that ``load_lora_weights`` reads."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("attn.to_out.0"):
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(2, module.in_features, generator=generator)
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 2, generator=generator)
    save_file(tensors, directory / "lora.safetensors")
    return directory


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", JOINT_FAMILIES)
def test_lora_on_joint_attention_with_its_scale(method, fixture, request, tmp_path):
    folder = None

    def prepare(pipe):
        nonlocal folder
        folder = folder or write_tiny_transformer_lora(pipe.transformer, tmp_path)
        pipe.load_lora_weights(str(folder), weight_name="lora.safetensors")

    pipe, stock = _pair(method, request.getfixturevalue(fixture), prepare)
    _check(method, pipe, stock, joint_attention_kwargs={"scale": 0.5}, **CALL[fixture])
    without = parent_pipeline(type(pipe)).from_pretrained(request.getfixturevalue(fixture))
    without.set_progress_bar_config(disable=True)
    assert not torch.equal(_run(without, **CALL[fixture]), _run(stock, **CALL[fixture]))  # the LoRA takes part


@pytest.mark.parametrize("method", list(CONTROLS))
@pytest.mark.parametrize("fixture", ["tiny_sdxl_path", "tiny_sd3_path"])
def test_clip_skip(method, fixture, request):
    pipe, stock = _pair(method, request.getfixturevalue(fixture), lambda pipe: None)
    _check(method, pipe, stock, clip_skip=1, **CALL[fixture])


@pytest.mark.xfail(strict=True, raises=AttributeError,
                   reason="stock diffusers 0.42.1 StableDiffusionPipeline.encode_prompt reads "
                          "text_encoder.text_model, which transformers 5 removed (docs/families.md)")  # fmt: skip
@pytest.mark.parametrize("method", list(CONTROLS))
def test_clip_skip_on_sd(method, tiny_sd_path):
    pipe, stock = _pair(method, tiny_sd_path, lambda pipe: None)
    with pytest.raises(AttributeError, match="'CLIPTextModel' object has no attribute 'text_model'"):
        _run(stock, clip_skip=1)  # the parent pipeline itself fails
    _check(method, pipe, stock, clip_skip=1)


@torch.no_grad()  # as the pipeline encodes: with autograd on, the tiny T5 and CLIP differ in the last bits
def _encoded(fixture, stock) -> dict:
    """The prompt encoded by the family's own ``encode_prompt``, as the keyword arguments its ``__call__`` takes."""
    cpu, length = torch.device("cpu"), TINY_MAX_SEQUENCE_LENGTH
    if fixture == "tiny_flux_path":
        embeds, pooled, _ = stock.encode_prompt(prompt=PROMPT, device=cpu, max_sequence_length=length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if fixture == "tiny_pixart_path":
        names = ["prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"]
        encoded = stock.encode_prompt(PROMPT, device=cpu, max_sequence_length=length)
        return dict(zip(names, encoded)) | {"negative_prompt": None}  # its default "" would clash with the embeds
    extra = {"prompt_2": None, "prompt_3": None, "max_sequence_length": length} if fixture == "tiny_sd3_path" else {}
    encoded = stock.encode_prompt(prompt=PROMPT, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=True,
                                  **extra)  # fmt: skip
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(names, encoded))


@pytest.mark.parametrize("fixture", list(CALL))
def test_regions_with_prompt_embeds_and_explicit_positions(fixture, request):
    pipe, stock = _pair(RegionalDiffusionPipeline, request.getfixturevalue(fixture), lambda pipe: None)
    call = dict(prompt=PROMPT, num_inference_steps=2, output_type="pt", **CALL[fixture])
    named = pipe(regions=[("red car", (0, 0, 0.5, 1))], generator=torch.Generator().manual_seed(0), **call)
    positions = named.region_tokens[0]
    embeds = _encoded(fixture, stock) | {"prompt": None}
    out = pipe(regions=[(positions, (0, 0, 0.5, 1))], generator=torch.Generator().manual_seed(0), **call | embeds)
    assert torch.equal(out.images, named.images)
    assert not torch.equal(out.images, _run(stock, **CALL[fixture]))
    with pytest.raises(ValueError, match="names a phrase, which needs the prompt text"):
        pipe(regions=[("red car", (0, 0, 0.5, 1))], **call | embeds)


# -- Wan: FreeSwim, whose first stage is the stock WanPipeline -------------------------------------------------
WAN_CALL = dict(prompt="a cat walking on the beach", negative_prompt="blurry", height=64, width=80, native_height=48,
                native_width=64, num_frames=5, num_inference_steps=2, max_sequence_length=16, output_type="pt")  # fmt: skip


def _load_freeswim(path):
    from attnctl import FreeSwimPipeline

    pipe = FreeSwimPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def freeswim(tiny_wan_path):
    return _load_freeswim(tiny_wan_path)


def _swim(pipe, **kwargs):
    return pipe(**WAN_CALL | {"generator": torch.Generator().manual_seed(0)} | kwargs)


def _stock_wan(pipe, **kwargs):
    from diffusers import WanPipeline

    stock = WanPipeline(**{k: v for k, v in pipe.components.items() if k in WanPipeline._get_signature_keys(WanPipeline)[0]})
    stock.set_progress_bar_config(disable=True)
    call = {k: v for k, v in WAN_CALL.items() if not k.startswith("native")} | dict(height=48, width=64)
    return stock(**call | {"generator": torch.Generator().manual_seed(0)} | kwargs).frames


def test_freeswim_with_lora_is_the_stock_wan_pipeline_in_stage_one(tiny_wan_path, tmp_path):
    pipe = _load_freeswim(tiny_wan_path)  # its own: the LoRA stays loaded
    plain = _swim(pipe)
    pipe.load_lora_weights(str(write_tiny_transformer_lora(pipe.transformer, tmp_path)), weight_name="lora.safetensors")
    out = _swim(pipe, attention_kwargs={"scale": 0.5})
    assert torch.equal(out.native_frames, _stock_wan(pipe, attention_kwargs={"scale": 0.5}))
    assert np.isfinite(np.asarray(out.frames)).all() and not torch.equal(out.frames, plain.frames)


def test_freeswim_with_prompt_embeds_is_freeswim_with_the_prompt(freeswim):
    with torch.no_grad():
        embeds, negative = freeswim.encode_prompt(WAN_CALL["prompt"], WAN_CALL["negative_prompt"],
                                                  max_sequence_length=16, device=torch.device("cpu"))  # fmt: skip
    out = _swim(freeswim, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    expected = _swim(freeswim)
    assert torch.equal(out.frames, expected.frames) and torch.equal(out.native_frames, expected.native_frames)


def test_freeswim_with_model_cpu_offload_is_unchanged(tiny_wan_path, freeswim):
    offloaded = _load_freeswim(tiny_wan_path)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert torch.equal(_swim(offloaded).frames, _swim(freeswim).frames)
