"""FreeSwim on Wan image-to-video (2.1 with CLIP context, 2.2 A14B layout, TI2V-5B) and VACE folders: stage 2
keeps each variant's conditioning; mismatched folders fail at load.

Each tiny folder is a stock diffusers pipeline saved with ``save_pretrained``. The pipeline contract (the variant
picked at load, stage 1 the stock parent bit for bit, save/load, batches, bad arguments) runs for every variant in
tests/pipelines/test_freeswim_contract.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnctl import FreeSwimImageToVideoPipeline, FreeSwimPipeline
from attnctl.models.tiny_wan import build_tiny_wan_variant, save_tiny_wan_pipeline, tiny_wan_inputs

NATIVE, TARGET, FRAMES = 32, 64, 5
VARIANTS = ("i2v-2.1", "i2v-2.2", "ti2v-5b", "vace")


def freeswim(pipe, variant, **overrides):
    arguments = dict(
        prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES, num_inference_steps=2,
        max_sequence_length=512 if variant == "i2v-2.1" else 16,  # Wan 2.1 I2V needs 512 (families.md trap 6)
        generator=torch.Generator().manual_seed(0), height=TARGET, width=TARGET, native_height=NATIVE,
        native_width=NATIVE, output_type="latent",
    ) | tiny_wan_inputs(variant, NATIVE, FRAMES)
    return pipe(**(arguments | overrides))


@pytest.fixture(scope="module", params=VARIANTS)
def loaded(request, tiny_wan_folder):
    variant = request.param
    pipe = FreeSwimPipeline.from_pretrained(tiny_wan_folder(variant))
    pipe.set_progress_bar_config(disable=True)
    return variant, pipe


def test_stage_two_keeps_the_conditioning_at_the_target_size(loaded):
    variant, pipe = loaded
    assert (pipe.transformer_2 is not None) == (variant == "i2v-2.2")
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
        image = pipe.video_processor.preprocess(tiny_wan_inputs(variant)["image"], height=TARGET, width=TARGET)
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
