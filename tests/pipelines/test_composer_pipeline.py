"""PrimeComposerPipeline: the pipeline contract on SD and SDXL, then end to end on the tiny offline SD and SDXL:
both modes and domains, the background guarantee, control off = the stock UNet, the bad-input errors of issue 8,
and what SDXL adds (both text encoders, the pooled embedding and time ids in every pass, the VAE upcast)."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pytest
import torch
from contract import OnSDXL, PipelineContract

from attnctl import PrimeComposerPipeline, PrimeComposerXLPipeline
from attnctl.core import AttentionController
from attnctl.methods.compose import SPEC
from attnctl.models.families import get_family

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


class TestComposerSDXL(OnSDXL, TestComposerSD):
    bad_arguments = [({"guidance_rescale": 0.7}, "guidance_rescale=0.7 is not supported"),
                     ({"subject_words": "cat"}, "'cat'")]


@pytest.mark.parametrize("pipeline", ["StableDiffusion3Pipeline", "FluxPipeline", "PixArtSigmaPipeline"])
def test_other_families_are_refused_before_loading(tmp_path, pipeline):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))  # nothing else to load
    with pytest.raises(ValueError, match="ComposerMethod does not support the .* family; it supports: sd, sdxl"):
        PrimeComposerPipeline.from_pretrained(tmp_path)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipe(request):
    pipeline = PrimeComposerPipeline.from_pretrained(request.getfixturevalue(f"tiny_{request.param}_path"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _compose(pipe, **overrides):
    background, subject, mask = _images()
    kwargs = dict(prompt=PROMPT, image=background, subject_image=subject, subject_mask=mask,
                  target_box=(20, 8, 44, 40), subject_words="dog", num_inference_steps=4, seed=0,
                  inversion_token_id=None, output_type="np")
    kwargs.update(overrides)
    return pipe(**kwargs)


@pytest.mark.parametrize(("faithful", "domain"), [(False, "same"), (False, "cross"), (True, "same")])
def test_composition_runs_and_returns_the_masks_it_used(pipe, faithful, domain):
    # faithful: the release's square canvas, SD's default size; the tiny SDXL's default (32 px) leaves the subject no
    # cell on its coarsest grid, so it gets the same 64 px canvas explicitly
    sizes = {"height": 64, "width": 64} if faithful and pipe.family == "sdxl" else {}
    out = _compose(pipe, faithful=faithful, domain=domain, **sizes)
    height, width = (64, 64) if faithful else (48, 64)
    assert out.images.shape == (1, height, width, 3) and np.isfinite(out.images).all()
    assert set(out.masks) == {"subject", "box", "reference", "target"}
    assert all(mask.size == (width, height) for mask in out.masks.values())
    latent = (height // 2, width // 2)
    levels = {"sd": 2, "sdxl": 3}[pipe.family]  # UNet resolutions of the tiny models
    assert set(out.layer_masks) == {(latent[0] // 2**i, latent[1] // 2**i) for i in range(levels)}
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


def _position_embedding(encoder):
    """CLIP's position embedding (``CLIPTextModelWithProjection`` keeps it under ``text_model``)."""
    return next(m for name, m in encoder.named_modules() if name.endswith("embeddings.position_embedding"))


def test_exceptional_inversion_prompt_drops_position_embeddings(pipe):
    token = 600
    ours = pipe.encode_inversion_prompt(token, torch.device("cpu"))
    encoders = [copy.deepcopy(pipe.text_encoder)] + ([copy.deepcopy(pipe.text_encoder_2)] if pipe.family == "sdxl"
                                                     else [])
    ids = torch.full((1, 77), token)
    with torch.no_grad():
        for encoder in encoders:
            _position_embedding(encoder).weight.zero_()
        if pipe.family == "sd":
            torch.testing.assert_close(ours.states, encoders[0](ids)[0])
            assert ours.added == {}
        else:  # SDXL: both encoders' penultimate states side by side, the second's pooled projection
            outputs = [encoder(ids, output_hidden_states=True) for encoder in encoders]
            torch.testing.assert_close(ours.states, torch.cat([o.hidden_states[-2] for o in outputs], dim=-1))
            torch.testing.assert_close(ours.added["text_embeds"], outputs[1].text_embeds)
    for encoder in pipe.text_encoders:
        assert not _position_embedding(encoder)._forward_hooks  # the hooks are gone
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
        ({"eta": 0.5}, "eta=0.5 is not supported"),
        ({"height": 50}, "height=50 is invalid: expected a multiple of {multiple}"),
        ({"faithful": True, "height": 64, "width": 32}, "square canvas"),
    ],
)
def test_bad_input_raises_a_clear_error(pipe, overrides, message):
    multiple = {"sd": 4, "sdxl": 8}[pipe.family]  # VAE factor 2 x the UNet's downsampling (2 or 3 levels)
    with pytest.raises(ValueError, match=message.format(multiple=multiple)):
        _compose(pipe, **overrides)


def test_with_every_control_off_the_controlled_unet_is_the_stock_unet(pipe, monkeypatch):
    # no injection, no re-paste, no RCA: the installed processors must compute exactly what diffusers' do
    controls_off = dict(tau_a=0.0, tau_c=0.0, rca=False)
    controlled = _compose(pipe, **controls_off).images
    on = _compose(pipe, tau_a=0.5, tau_c=0.0).images  # injection and RCA on: a different, finite image
    assert np.isfinite(on).all() and not np.array_equal(on, controlled)
    monkeypatch.setattr(AttentionController, "installed", lambda self, model: contextlib.nullcontext())
    assert np.array_equal(controlled, _compose(pipe, **controls_off).images)  # diffusers' own processors


@pytest.fixture(scope="module")
def xl_pipe(tiny_sdxl_path):
    pipeline = PrimeComposerPipeline.from_pretrained(tiny_sdxl_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _unet_inputs(pipe, **overrides):
    """Every UNet call's batch size, ``encoder_hidden_states`` and ``added_cond_kwargs`` during one composition."""
    seen = []

    def record(module, args, kwargs):
        seen.append((args[0].shape[0], kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]))

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _compose(pipe, num_inference_steps=2, **overrides)
    finally:
        handle.remove()
    return seen


def test_sdxl_every_unet_pass_gets_the_pooled_embedding_and_the_time_ids(xl_pipe):
    cond, uncond, pooled, negative_pooled = xl_pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                                  do_classifier_free_guidance=True)
    empty_states, _, empty_pooled, _ = xl_pipe.encode_prompt("", device="cpu", num_images_per_prompt=1,
                                                             do_classifier_free_guidance=False)
    seen = _unet_inputs(xl_pipe, tau_a=0.5, tau_c=0.0)
    # 2 inversion steps ([background, reference]), then per step: one correlation pass when injecting, and the
    # generator ([uncond, cond]); 0.5 of 2 steps inject
    assert [batch for batch, _, _ in seen] == [2, 2, 2, 2, 2]
    inversion, correlation, generator = seen[:2], seen[2], seen[3:]
    time_ids = torch.tensor([[48.0, 64.0, 0.0, 0.0, 48.0, 64.0]])  # (original size, crop corner, target size)
    for batch, _, added in seen:
        assert set(added) == {"text_embeds", "time_ids"} and torch.equal(added["time_ids"], time_ids.expand(batch, -1))
    for _, states, added in inversion:  # inversion_token_id=None: the empty prompt through both encoders
        assert torch.equal(states, empty_states.expand(2, -1, -1))
        assert torch.equal(added["text_embeds"], empty_pooled.expand(2, -1))
    _, states, added = correlation  # paper mode: [composite, reference], the prompt's condition
    assert torch.equal(states, cond.expand(2, -1, -1)) and torch.equal(added["text_embeds"], pooled.expand(2, -1))
    for _, states, added in generator:
        assert torch.equal(states, torch.cat([uncond, cond]))
        assert torch.equal(added["text_embeds"], torch.cat([negative_pooled, pooled]))


def test_sdxl_micro_conditioning_arguments_reach_the_unet(xl_pipe):
    seen = _unet_inputs(xl_pipe, original_size=(96, 128), target_size=(48, 64), crops_coords_top_left=(4, 8),
                        negative_original_size=(32, 32), negative_target_size=(16, 16))
    generator = seen[-1][2]["time_ids"]
    assert generator.tolist() == [[32.0, 32.0, 0.0, 0.0, 16.0, 16.0], [96.0, 128.0, 4.0, 8.0, 48.0, 64.0]]
    assert all(added["time_ids"][-1].tolist() == [96.0, 128.0, 4.0, 8.0, 48.0, 64.0] for _, _, added in seen)
    default = _compose(xl_pipe).images
    assert not np.array_equal(_compose(xl_pipe, original_size=(96, 128)).images, default)


def test_sdxl_vae_runs_in_float32_where_its_config_forces_the_upcast(xl_pipe):
    dtypes = []
    handles = [m.register_forward_pre_hook(lambda module, args: dtypes.append(args[0].dtype))
               for m in (xl_pipe.vae.encoder, xl_pipe.vae.decoder)]
    assert xl_pipe.vae.config.force_upcast
    try:
        xl_pipe.vae.to(torch.float16)
        background = _images()[0]
        latents = xl_pipe.encode_image_latents(background, False, None, torch.device("cpu"))
        assert xl_pipe.vae.dtype == torch.float16 and latents.dtype == xl_pipe.unet.dtype
        images, nsfw = xl_pipe._decode(latents, "pt", torch.device("cpu"), latents.dtype)
        assert xl_pipe.vae.dtype == torch.float16 and nsfw is None and torch.isfinite(images).all()
    finally:
        xl_pipe.vae.to(torch.float32)
        for handle in handles:
            handle.remove()
    assert dtypes == [torch.float32, torch.float32]  # the encoder and the decoder ran upcast


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt_2": "a cat on a bench"}, "prompt_2 differs from prompt"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 77, 24), "subject_words": None,
          "subject_token_indices": [3]}, "prompt_embeds was given without pooled_prompt_embeds"),
        ({"denoising_end": 0.5}, "denoising_end=0.5 is not supported"),
        ({"num_images_per_prompt": 2}, "num_images_per_prompt=2 is not supported"),
    ],
)
def test_sdxl_bad_input_raises_a_clear_error(xl_pipe, overrides, message):
    with pytest.raises(ValueError, match=message):
        _compose(xl_pipe, **overrides)


def test_the_compose_method_spec_accepts_sd_and_sdxl_for_the_cli_and_the_ui():
    for family in ("sd", "sdxl"):
        SPEC.require_family(get_family(family))  # what `attnctl generate --method compose` and the UI call
    SPEC.check_signature(PrimeComposerXLPipeline)  # every argument the spec passes is a named __call__ argument
    with pytest.raises(ValueError, match=r"compose does not apply to .*\(sd3\).*families sd, sdxl"):
        SPEC.require_family(get_family("sd3"))
