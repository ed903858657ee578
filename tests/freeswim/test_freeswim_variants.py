"""FreeSwim on Wan image-to-video (2.1 with CLIP context, 2.2 A14B layout, TI2V-5B) and VACE folders.

Each tiny folder is a stock diffusers pipeline saved with ``save_pretrained``; ``FreeSwimPipeline.from_pretrained``
must pick the variant, stage 1 must be the stock parent pipeline bit for bit, the controlled processor with no
control must leave the stock pipeline's output unchanged, and stage 2 must keep the variant's conditioning.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanVACEPipeline

from attnctl import FreeSwimImageToVideoPipeline, FreeSwimPipeline, FreeSwimVACEPipeline
from attnctl.core import AttentionController
from attnctl.freeswim.wan_processor import wan_processor_factory
from attnctl.models.tiny_wan import build_tiny_wan_variant, save_tiny_wan_pipeline

NATIVE, TARGET, FRAMES = 32, 64, 5
CLASSES = {
    "i2v-2.1": FreeSwimImageToVideoPipeline,
    "i2v-2.2": FreeSwimImageToVideoPipeline,
    "ti2v-5b": FreeSwimImageToVideoPipeline,
    "vace": FreeSwimVACEPipeline,
}


def picture(seed=1, size=(NATIVE, NATIVE)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def variant_inputs(variant):
    """The variant's own inputs: an image for I2V; a control video, mask and reference image for VACE."""
    if variant == "vace":
        video = [picture(seed) for seed in range(FRAMES)]
        mask = [PIL.Image.new("L", (NATIVE, NATIVE), 255 if i % 2 else 0) for i in range(FRAMES)]
        return dict(video=video, mask=mask, reference_images=[picture(9)], conditioning_scale=[1.0, 0.5])
    return dict(image=picture())


def text_length(variant):
    return 512 if variant == "i2v-2.1" else 16  # Wan 2.1 I2V needs 512 text tokens (families.md trap 6)


def common(variant, seed=0):
    return dict(
        prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES, num_inference_steps=2,
        max_sequence_length=text_length(variant), generator=torch.Generator().manual_seed(seed),
    )


def freeswim(pipe, variant, **overrides):
    arguments = common(variant) | variant_inputs(variant) | dict(
        height=TARGET, width=TARGET, native_height=NATIVE, native_width=NATIVE, output_type="latent"
    )
    return pipe(**(arguments | overrides))


@pytest.fixture(scope="module", params=sorted(CLASSES))
def loaded(request, tmp_path_factory):
    variant = request.param
    folder = save_tiny_wan_pipeline(tmp_path_factory.mktemp(variant), variant=variant)
    pipe = FreeSwimPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return variant, folder, pipe


def stock_of(pipe):
    """The stock parent pipeline on the same components and settings (boundary, expand_timesteps)."""
    settings = {k: pipe.config[k] for k in ("boundary_ratio", "expand_timesteps") if k in pipe.config}
    parent = WanVACEPipeline if isinstance(pipe, WanVACEPipeline) else WanImageToVideoPipeline
    stock = parent(**pipe.components, **settings)
    stock.set_progress_bar_config(disable=True)
    return stock


def test_from_pretrained_picks_the_variant_and_round_trips(loaded, tmp_path):
    variant, folder, pipe = loaded
    assert type(pipe) is CLASSES[variant]
    assert (pipe.transformer_2 is not None) == (variant == "i2v-2.2")
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == CLASSES[variant].__name__
    assert type(FreeSwimPipeline.from_pretrained(tmp_path)) is CLASSES[variant]


def test_stage_one_is_the_stock_parent_pipeline(loaded):
    variant, _, pipe = loaded
    out = freeswim(pipe, variant, output_type="pt")
    stock = stock_of(pipe)(**common(variant), **variant_inputs(variant), height=NATIVE, width=NATIVE,
                           output_type="pt").frames
    assert torch.equal(out.native_frames, stock)


def test_controlled_processor_without_controls_is_the_stock_pipeline(loaded):
    variant, _, pipe = loaded
    stock = stock_of(pipe)
    arguments = common(variant) | variant_inputs(variant) | dict(height=NATIVE, width=NATIVE, output_type="latent")
    reference = stock(**arguments).frames
    models = [m for m in (stock.transformer, stock.transformer_2) if m is not None]
    controller = AttentionController([])
    with controller.installed(models[0], processor_factory=wan_processor_factory(models[0])):
        if len(models) == 2:
            with AttentionController([]).installed(models[1], processor_factory=wan_processor_factory(models[1])):
                controlled = stock(**(arguments | {"generator": torch.Generator().manual_seed(0)})).frames
        else:
            controlled = stock(**(arguments | {"generator": torch.Generator().manual_seed(0)})).frames
    assert torch.equal(controlled, reference)


def test_control_on_changes_the_refinement_and_stays_finite(loaded):
    variant, _, pipe = loaded
    controlled = freeswim(pipe, variant).frames
    assert pipe.freeswim_states["transformer"].full_branch_runs  # the dual path ran on stage 2
    grid = TARGET // 16
    plain = freeswim(pipe, variant, window_size=(grid, grid), dual_path=False, attention_scale=None).frames
    assert torch.isfinite(controlled).all() and torch.isfinite(plain).all()
    assert (controlled - plain).abs().max() > 1e-4


def test_stage_two_keeps_the_conditioning_at_the_target_size(loaded):
    variant, _, pipe = loaded
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            {k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        ),
        with_kwargs=True,
    )
    try:
        latents = freeswim(pipe, variant, strength=1.0).frames
    finally:
        hook.remove()
    stage_two = [shapes for shapes in seen if shapes["hidden_states"][-1] == TARGET // 8]
    assert stage_two
    rows = {shapes["hidden_states"][0] for shapes in stage_two}
    assert rows == {1, 2}  # plain passes and dual passes (window and full rows)
    first = stage_two[0]
    if variant in ("i2v-2.1", "i2v-2.2"):
        assert first["hidden_states"][1] == 12  # z noise + 4 mask + z condition channels
    if variant == "i2v-2.1":
        assert first["encoder_hidden_states_image"][1:] == (17, 16)  # CLIP penultimate states
    if variant == "ti2v-5b":
        assert first["timestep"] == (first["hidden_states"][0], 2 * (TARGET // 16) ** 2)  # per token
        image = pipe.video_processor.preprocess(picture(), height=TARGET, width=TARGET)
        condition = pipe.prepare_latents(image, 1, 4, TARGET, TARGET, FRAMES, torch.float32, "cpu", None,
                                         torch.zeros(1, 4, 2, 8, 8))[1]
        assert torch.equal(latents[:, :, 0], condition[:, :, 0])  # the image latent stays the first frame
    if variant == "vace":
        assert first["control_hidden_states"] == (first["hidden_states"][0], 72, 1 + 2, 8, 8)  # 1 reference frame
        assert latents.shape[2] == 3  # reference frame in front, as WanVACEPipeline's latents
        decoded = freeswim(pipe, variant, output_type="pt").frames
        assert decoded.shape == (1, FRAMES, 3, TARGET, TARGET)


def test_unsupported_or_mismatched_wan_folders_fail_at_load(tmp_path):
    t2v = save_tiny_wan_pipeline(tmp_path / "t2v")
    with pytest.raises(ValueError, match="loads as FreeSwimPipeline, not FreeSwimImageToVideoPipeline"):
        FreeSwimImageToVideoPipeline.from_pretrained(t2v)
    index = json.loads((t2v / "model_index.json").read_text())
    (t2v / "model_index.json").write_text(json.dumps(index | {"_class_name": "WanAnimatePipeline"}))
    with pytest.raises(ValueError, match="holds a WanAnimatePipeline; FreeSwim supports"):
        FreeSwimPipeline.from_pretrained(t2v)
    # a text-to-video index over an image-to-video transformer: refused, never half loaded
    i2v = build_tiny_wan_variant("i2v-2.2")
    from diffusers import WanPipeline

    WanPipeline(**{k: v for k, v in i2v.components.items() if k not in ("image_encoder", "image_processor",
                                                                        "transformer_2")}).save_pretrained(tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"transformer \(WanTransformer3DModel, in_channels=12\) is not a Wan text-to-video"):
        FreeSwimPipeline.from_pretrained(tmp_path / "mixed")


def test_bad_variant_inputs_raise_value_errors(tmp_path):
    i2v = FreeSwimPipeline.from_pretrained(save_tiny_wan_pipeline(tmp_path / "i2v", variant="i2v-2.1"))
    with pytest.raises(ValueError, match="max_sequence_length=16 .*needs 512 text tokens"):
        freeswim(i2v, "i2v-2.1", max_sequence_length=16)
    vace = FreeSwimPipeline.from_pretrained(save_tiny_wan_pipeline(tmp_path / "vace", variant="vace"))
    with pytest.raises(ValueError, match=r"conditioning_scale=\[1.0, 1.0, 1.0\] must be a number or one number per"):
        freeswim(vace, "vace", conditioning_scale=[1.0, 1.0, 1.0])
