"""StructuredDiffusionPipeline end to end on the tiny offline model."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from attnctl import StructuredDiffusionPipeline

PROMPT = "a red car and a blue bench"


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    pipe = StructuredDiffusionPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock(tiny_sd_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(prompt, generator=_gen(seed), output_type="pt", **kwargs)


def test_stock_mode_is_identical_to_stable_diffusion(pipe, stock):
    expected = _images(stock).images
    assert torch.equal(_images(pipe, struct_mode=None).images, expected)


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


def test_batches_and_images_per_prompt_match_single_runs(pipe):
    prompts = [PROMPT, "a small green cube on a yellow table"]
    batch = pipe(prompts, generator=[_gen(1), _gen(2), _gen(3), _gen(4)], num_images_per_prompt=2,
                 num_inference_steps=3, output_type="pt", negative_prompt=["blurry", "dark"])
    assert batch.images.shape == (4, 3, 64, 64) and len(batch.phrases) == 2
    for index, (prompt, seed, negative) in enumerate([(PROMPT, 1, "blurry"), (prompts[1], 4, "dark")]):
        row = 0 if index == 0 else 3
        single = _images(pipe, prompt, seed, negative_prompt=negative).images
        torch.testing.assert_close(batch.images[row : row + 1], single, atol=1e-4, rtol=0)


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


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = StructuredDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_images(loaded).images, _images(pipe).images)


def test_processors_are_restored_when_a_call_raises(pipe):
    def explode(pipeline, step, timestep, kwargs):
        raise RuntimeError("stop at step 1")

    with pytest.raises(RuntimeError, match="stop at step 1"):
        _images(pipe, callback_on_step_end=explode)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


def test_callback_on_step_end_sees_every_step(pipe):
    steps = []

    def record(pipeline, step, timestep, kwargs):
        steps.append(step)
        assert kwargs["latents"].shape == (1, 4, 32, 32)
        return kwargs

    _images(pipe, callback_on_step_end=record, num_inference_steps=4)
    assert steps == [0, 1, 2, 3]


def test_attention_maps_are_labelled_per_token_at_image_size(pipe):
    out = _images(pipe, return_attention_maps=True, num_images_per_prompt=2)
    assert len(out.attention_maps) == 2
    heatmaps = out.attention_maps[0]
    assert heatmaps.tokens == ["a", "red", "car", "and", "a", "blue", "bench"]
    assert heatmaps.maps.shape == (7, 64, 64)
    phrase = out.phrases[0][0]
    assert heatmaps.span(phrase.token_start, phrase.token_end).shape == (64, 64)
    assert heatmaps.normalized().max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="   "), "is empty"),
        (dict(prompt=""), "is empty"),
        (dict(prompt=PROMPT, struct_mode="both"), "struct_mode='both'"),
        (dict(prompt=PROMPT, phrases=["a green dog"]), "does not occur in the prompt"),
        (dict(prompt=[PROMPT, PROMPT], phrases=[["a red car"]]), "1 lists for 2 prompts"),
    ],
)
def test_bad_input_is_a_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=1, **kwargs)


def test_overlong_prompt_is_truncated_with_warnings(pipe, caplog):
    prompt = "a red car and a blue bench " + "very " * 80 + "and a green cat"
    with caplog.at_level("WARNING"):
        out = _images(pipe, prompt, phrases=["a blue bench", "a green cat"], num_inference_steps=1)
    assert [p.text for p in out.phrases[0]] == ["a blue bench"]
    assert "past the tokenizer's limit" in caplog.text



def test_model_cpu_offload_hooks_leave_the_result_unchanged(pipe, tiny_sd_path):
    offloaded = StructuredDiffusionPipeline.from_pretrained(tiny_sd_path)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")  # accelerate's hooks around every model, as on a GPU
    assert torch.equal(_images(offloaded).images, _images(pipe).images)
    assert torch.equal(_images(offloaded).images, _images(pipe).images)  # and again: hooks reset properly
