"""StructuredDiffusionPipeline: the pipeline contract on every family, then what is specific to the method."""

from __future__ import annotations

import pytest
import torch
from contract import T5_CALL, OnFlux, OnPixArt, OnSD, OnSD3, OnSD35, OnSDXL, StockContract, on_families
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from attnctl import StructuredDiffusionPipeline

PROMPT = "a red car and a blue bench"
STRUCTURED_BAD_ARGUMENTS = [
    (dict(prompt="   "), "is empty"),
    (dict(prompt=""), "is empty"),
    (dict(struct_mode="both"), "struct_mode='both'"),
    (dict(phrases=["a green dog"]), "does not occur in the prompt"),
    (dict(prompt=[PROMPT, PROMPT], phrases=[["a red car"]]), "1 lists for 2 prompts"),
]


class StructuredContract(StockContract):
    pipeline_class = StructuredDiffusionPipeline
    control_on = {"struct_mode": "values"}
    control_off = {"struct_mode": None}
    bad_arguments = STRUCTURED_BAD_ARGUMENTS


(TestStructuredSD, TestStructuredSDXL, TestStructuredSD3, TestStructuredSD35, TestStructuredFlux,
 TestStructuredPixArt) = on_families(StructuredContract, OnSD, OnSDXL, OnSD3, OnSD35, OnFlux, OnPixArt)


@pytest.fixture(scope="module")
def pipe(load_tiny_sd):
    return load_tiny_sd(StructuredDiffusionPipeline)


@pytest.fixture(scope="module")
def stock(load_tiny_sd):
    return load_tiny_sd(StableDiffusionPipeline)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(prompt, generator=_gen(seed), output_type="pt", **kwargs)


@pytest.mark.parametrize("phrases", [None, ["A red car."]])
def test_prompt_whose_only_phrase_is_itself_is_identical_to_stock(pipe, stock, phrases):
    out = _images(pipe, "a red car", phrases=phrases)
    assert out.phrases == [[]]
    assert torch.equal(out.images, _images(stock, "a red car").images)


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_structured_modes_use_the_parsed_phrases_and_change_the_image(pipe, stock, mode):
    out = _images(pipe, struct_mode=mode)
    assert [[p.text for p in row] for row in out.phrases] == [["a red car", "a blue bench"]]
    assert out.phrases[0][1].token_start == 4 and out.phrases[0][1].token_end == 7
    assert not torch.allclose(out.images, _images(stock).images)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


def test_prompt_embeds_with_parsed_phrases_match_the_prompt_path(pipe):
    embeds, negative = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
    phrases = pipe.parse_phrases(PROMPT)
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, phrases=phrases, generator=_gen(),
               num_inference_steps=3, output_type="pt")
    torch.testing.assert_close(out.images, _images(pipe).images, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="plain string"):
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, phrases=["a red car"], num_inference_steps=1)


def test_prompt_embeds_without_phrases_warns_and_runs_stock(pipe, stock):
    embeds, negative = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
    with pytest.warns(UserWarning, match="structured guidance is off"):
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=_gen(),
                   num_inference_steps=3, output_type="pt")
    torch.testing.assert_close(out.images, _images(stock).images, atol=1e-6, rtol=0)


def test_missing_spacy_pipeline_raises_where_no_phrases_can_be_had(pipe, stock, monkeypatch):
    import attnctl.structured.phrases as phrases_module

    monkeypatch.setattr(phrases_module, "load_english_pipeline", lambda: None)
    with pytest.raises(ValueError, match="phrases: no English spaCy pipeline is installed .*struct_mode=None"):
        _images(pipe)
    assert _images(pipe, phrases=["a red car"]).images.shape == _images(stock).images.shape  # given phrases work


def test_attention_maps_are_labelled_per_token_at_image_size(pipe):
    out = _images(pipe, return_attention_maps=True, num_images_per_prompt=2)
    assert len(out.attention_maps) == 2
    heatmaps = out.attention_maps[0]
    assert heatmaps.tokens == ["a", "red", "car", "and", "a", "blue", "bench"]
    assert heatmaps.maps.shape == (7, 64, 64)
    phrase = out.phrases[0][0]
    assert heatmaps.span(phrase.token_start, phrase.token_end).shape == (64, 64)
    assert heatmaps.normalized().max() <= 1.0


def test_overlong_prompt_is_truncated_with_warnings(pipe, caplog):
    prompt = "a red car and a blue bench " + "very " * 80 + "and a green cat"
    with caplog.at_level("WARNING"):
        out = _images(pipe, prompt, phrases=["a blue bench", "a green cat"], num_inference_steps=1)
    assert [p.text for p in out.phrases[0]] == ["a blue bench"]
    assert "past the tokenizer's limit" in caplog.text


FAMILY_CALLS = {f.path_fixture: getattr(f, "call_kwargs", {}) for f in (OnSD, OnSDXL, OnSD3, OnSD35, OnFlux, OnPixArt)}


@pytest.mark.parametrize("fixture", list(FAMILY_CALLS))
def test_attention_maps_on_every_family_are_labelled_per_prompt_token(fixture, request):
    pipe = StructuredDiffusionPipeline.from_pretrained(request.getfixturevalue(fixture))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="pt", num_images_per_prompt=2, **FAMILY_CALLS[fixture])
    out = pipe(PROMPT, struct_mode=None, return_attention_maps=True, generator=_gen(), **kwargs)
    stock = pipe(PROMPT, struct_mode=None, generator=_gen(), **kwargs)
    torch.testing.assert_close(out.images, stock.images, atol=1e-4, rtol=0)  # recording does not steer
    height, width = out.images.shape[-2:]
    assert len(out.attention_maps) == 2
    for heatmaps in out.attention_maps:
        assert heatmaps.tokens == PROMPT.split()
        assert heatmaps.maps.shape == (7, height, width) and torch.isfinite(heatmaps.maps).all()
        assert heatmaps.maps.sum() > 0


@pytest.mark.parametrize("fixture", ["tiny_sd3_path", "tiny_flux_path"])
def test_joint_attention_refuses_keys_mode_and_maps_with_guidance(fixture, request):
    pipe = StructuredDiffusionPipeline.from_pretrained(request.getfixturevalue(fixture))
    with pytest.raises(ValueError, match="struct_mode='keys' is not defined on"):
        pipe(PROMPT, struct_mode="keys", num_inference_steps=1, **T5_CALL)
    with pytest.raises(ValueError, match="record maps with struct_mode=None"):
        pipe(PROMPT, return_attention_maps=True, num_inference_steps=1, **T5_CALL)


def test_sd3_phrases_move_their_clip_and_t5_rows(tiny_sd3_path):
    pipe = StructuredDiffusionPipeline.from_pretrained(tiny_sd3_path)
    phrase = pipe.parse_phrases(PROMPT, ["a blue bench"])[0]
    assert pipe.family_text.joint_moves(pipe, PROMPT, phrase, T5_CALL) == ((1 + 4, 1, 3), (77 + 4, 77, 3))
