"""PrimeComposerPipeline: the pipeline contract, then end to end on the tiny offline SD: both modes and domains,
the background guarantee and the bad-input errors of issue 8."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from contract import PipelineContract

from attnctl import PrimeComposerPipeline

PROMPT = "a red dog sitting on a bench"


def _images():
    """A 64x48 background (sky, ground, a bench) and a 30x40 subject: a red disc on white with its mask."""
    background = np.zeros((48, 64, 3), np.uint8)
    background[:, :] = (90, 150, 230)
    background[30:, :] = (60, 140, 50)
    background[26:32, 10:54] = (120, 80, 40)
    rows, cols = np.mgrid[:40, :30]
    disc = (rows - 20) ** 2 + (cols - 15) ** 2 <= 12**2
    subject = np.full((40, 30, 3), 255, np.uint8)
    subject[disc] = (220, 30, 30)
    return background, subject, disc.astype(np.uint8) * 255


class TestComposerSD(PipelineContract):
    pipeline_class = PrimeComposerPipeline
    path_fixture = "tiny_sd_path"
    prompt = PROMPT
    control_on = {}
    bad_arguments = [({"strength": 0.5}, "strength=0.5 is not supported"), ({"subject_words": "cat"}, "'cat'")]

    def base_arguments(self):
        background, subject, mask = _images()
        return dict(prompt=PROMPT, image=background, subject_image=subject, subject_mask=mask,
                    target_box=(20, 8, 44, 40), subject_words="dog", num_inference_steps=2, seed=0,
                    inversion_token_id=None, output_type="pt")


def test_sdxl_is_refused_before_loading(tiny_sdxl_path):
    with pytest.raises(ValueError, match="ComposerMethod does not support the sdxl family; it supports: sd"):
        PrimeComposerPipeline.from_pretrained(tiny_sdxl_path)


@pytest.fixture(scope="module")
def pipe(load_tiny_sd):
    return load_tiny_sd(PrimeComposerPipeline)


def _compose(pipe, **overrides):
    background, subject, mask = _images()
    kwargs = dict(prompt=PROMPT, image=background, subject_image=subject, subject_mask=mask,
                  target_box=(20, 8, 44, 40), subject_words="dog", num_inference_steps=4, seed=0,
                  inversion_token_id=None, output_type="np")
    kwargs.update(overrides)
    return pipe(**kwargs)


@pytest.mark.parametrize(("faithful", "domain"), [(False, "same"), (False, "cross"), (True, "same")])
def test_composition_runs_and_returns_the_masks_it_used(pipe, faithful, domain):
    out = _compose(pipe, faithful=faithful, domain=domain)
    height, width = (64, 64) if faithful else (48, 64)  # faithful: the release's square canvas
    assert out.images.shape == (1, height, width, 3) and np.isfinite(out.images).all()
    assert set(out.masks) == {"subject", "box", "reference", "target"}
    assert all(mask.size == (width, height) for mask in out.masks.values())
    latent = (height // 2, width // 2)
    assert set(out.layer_masks) == {latent, (latent[0] // 2, latent[1] // 2)}
    for grid, layer in out.layer_masks.items():
        assert layer.shape == grid and (layer == 2).any() and (layer == 0).any()
    assert out[0] is out.images


def test_same_seed_same_image(pipe):
    assert np.array_equal(_compose(pipe).images, _compose(pipe).images)


@pytest.mark.parametrize("faithful", [False, True])
def test_outside_the_box_every_blended_step_is_the_background_trajectory(pipe, faithful):
    seen = []

    def record(pipeline, index, timestep, tensors):
        seen.append((index, tensors["latents"].clone(), tensors["background_latents"]))
        return {}

    out = _compose(pipe, faithful=faithful, num_inference_steps=6, tau_a=0.5, tau_b=0.84, tau_c=0.2,
                   callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents", "background_latents"])
    latent_grid = max(out.layer_masks, key=lambda grid: grid[0])
    outside = out.layer_masks[latent_grid] == 0
    # latent indices j = index + 1 that are blended: release int(0.84 * 6 - 1) = 4 -> j in [2, 4); paper j <= 5
    blended = [2, 3] if faithful else [1, 2, 3, 4, 5]
    assert [index for index, _, _ in seen] == list(range(6))
    for index, latents, background in seen:
        if index + 1 in blended:
            assert torch.equal(latents[..., outside], background[..., outside])
    last = seen[-1]
    assert not torch.equal(last[1][..., outside], last[2][..., outside])  # after tau_b the seams may move


def test_rca_and_injection_each_change_the_result(pipe):
    base = _compose(pipe, tau_a=0.5, tau_c=0.0).images
    assert not np.array_equal(_compose(pipe, tau_a=0.5, tau_c=0.0, rca=False).images, base)
    assert not np.array_equal(_compose(pipe, tau_a=0.0, tau_c=0.0).images, base)


def test_exceptional_inversion_prompt_drops_position_embeddings(pipe):
    token = 600
    ours = pipe.encode_inversion_prompt(token, torch.device("cpu"))
    encoder = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        encoder.embeddings.position_embedding.weight.zero_()
        expected = encoder(torch.full((1, 77), token))[0]
    torch.testing.assert_close(ours, expected)
    assert not pipe.text_encoder.embeddings.position_embedding._forward_hooks  # the hook is gone
    with pytest.raises(ValueError, match="inversion_token_id=7788 is not in the tokenizer's vocabulary"):
        _compose(pipe, inversion_token_id=7788)
    assert _compose(pipe, inversion_token_id=token).images.shape == (1, 48, 64, 3)


def test_auto_inversion_token_uses_tf_icons_token_only_where_the_vocabulary_has_it(pipe, monkeypatch):
    import attnctl.pipelines.composer as module

    assert len(pipe.tokenizer) <= 7788 and pipe.resolve_inversion_token("auto") is None  # the tiny vocabulary
    default = _compose(pipe, inversion_token_id="auto").images
    assert np.array_equal(default, _compose(pipe, inversion_token_id=None).images)  # the empty prompt
    monkeypatch.setattr(module, "EXCEPTIONAL_TOKEN_ID", 600)  # a vocabulary that has the token
    assert pipe.resolve_inversion_token("auto") == 600 and pipe.resolve_inversion_token(None) is None
    assert np.array_equal(_compose(pipe, inversion_token_id="auto").images,
                          _compose(pipe, inversion_token_id=600).images)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"subject_mask": np.zeros((40, 30), np.uint8)}, "subject_mask is empty"),
        ({"target_box": (40, 8, 70, 40)}, r"target_box=\(40, 8, 70, 40\) lies outside the background image"),
        # inside the image, but the release's rounding puts the subject one cell past the border on a coarse grid
        ({"target_box": (0, 0, 20, 40), "faithful": True}, "outside the image"),
        ({"subject_mask": np.ones((40, 40), np.uint8)}, "subject_mask is 40x40 but subject_image is 30x40"),
        ({"target_box": None, "target_mask": np.ones((10, 10))}, "target_mask is 10x10 but image is 64x48"),
        ({"subject_words": "cat"}, "'cat' does not occur in prompt"),
        ({"tau_a": 0.9, "tau_b": 0.8}, "tau values are out of order"),
        ({"tau_b": 1.5}, r"tau_b=1.5 is invalid: expected a finite number in \[0, 1\]"),
        ({"subject_words": None}, "pass subject_words"),
        ({"strength": 0.5}, "strength=0.5 is not supported"),
        ({"height": 50}, "height=50 is invalid: expected a multiple of 4"),
        ({"faithful": True, "height": 64, "width": 32}, "square canvas"),
    ],
)
def test_bad_input_raises_a_clear_error(pipe, overrides, message):
    with pytest.raises(ValueError, match=message):
        _compose(pipe, **overrides)
