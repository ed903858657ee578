"""Attend-and-Excite and SynGen on the tiny PixArt-Sigma: T5 key positions, pooled maps, the legacy step callback
("off" equal to the stock PixArtSigmaPipeline bit for bit: test_binding_pipelines.py and the shared contract,
tests/pipelines)."""

from __future__ import annotations

import pytest
import torch
from diffusers import HeunDiscreteScheduler, PixArtSigmaPipeline

from attnctl import AttendAndExcitePixArtSigmaPipeline
from attnctl.core import AttentionController, guidance_rows
from attnctl.guidance import GradientMaps, PooledGradientMaps
from attnctl.models.tiny_families import tiny_call_arguments
from attnctl.structured import load_english_pipeline

needs_spacy = pytest.mark.skipif(load_english_pipeline() is None, reason="no English spaCy pipeline installed")
PROMPT = "a red circle and a blue square"  # T5: a red circle and a blue square </s> -> keys 0..7, no start token
NOUNS = [2, 6]


@pytest.fixture(scope="module")
def pipes(pixart_pipes):
    return pixart_pipes


def _run(pipe, prompt=PROMPT, **kwargs):
    return pipe(prompt, **{**tiny_call_arguments("pixart"), **kwargs}).images


@pytest.fixture(scope="module")
def stock_images(pipes):
    return _run(pipes[0])


def test_attend_excite_moves_every_step_deterministically(pipes, stock_images):
    first = pipes[1](PROMPT, token_indices=NOUNS, max_iter_to_alter=2, thresholds={}, scale_factor=1e5,
                     **tiny_call_arguments("pixart"))
    assert [h["index"] for h in first.guidance_log] == [0, 1]  # step 1 is guided through the legacy callback
    assert torch.isfinite(first.images).all() and not torch.equal(first.images, stock_images)
    again = _run(pipes[1], token_indices=NOUNS, max_iter_to_alter=2, thresholds={}, scale_factor=1e5)
    assert torch.equal(first.images, again)


def test_resolution_binning_draws_the_latents_at_the_binned_size(tiny_pixart_path):
    """With ``use_resolution_binning`` PixArt draws its latents at the nearest aspect-ratio bin, and so must the
    guidance: a guided run that never moves z equals stock (a transformer that declares sample_size 32 has
    bins; the tiny one's 16 has none)."""
    stock = PixArtSigmaPipeline.from_pretrained(tiny_pixart_path)
    stock.transformer.register_to_config(sample_size=32)  # this copy only
    ae = AttendAndExcitePixArtSigmaPipeline(**stock.components)
    args = {**tiny_call_arguments("pixart"), "use_resolution_binning": True, "height": 64, "width": 96}
    expected = stock(PROMPT, **args).images
    args["generator"] = torch.Generator().manual_seed(0)
    out = ae(PROMPT, token_indices=NOUNS, max_iter_to_alter=0, thresholds={0: 0.0}, **args)
    assert len(out.guidance_log) == 1 and torch.equal(out.images, expected)


def test_heat_maps_of_a_guided_run_are_the_prompt_tokens(pipes):
    """The heat maps come from the stock passes only (not the guidance forwards), one per T5 prompt token."""
    out = pipes[1](PROMPT, token_indices=NOUNS, max_iter_to_alter=2, thresholds={}, scale_factor=1e5,
                   return_attention_maps=True, **tiny_call_arguments("pixart"))
    maps = out.attention_maps[0]
    assert maps.tokens == PROMPT.split() and maps.maps.shape == (7, 32, 48)
    assert torch.isfinite(maps.maps).all() and (maps.maps >= 0).all()


def test_token_positions_come_from_the_tokenizer(pipes, tiny_sd_path):
    from attnctl import AttendAndExcitePipeline

    assert pipes[1].special_tokens() == (0, 1)  # T5: no start token, one </s>
    sd = AttendAndExcitePipeline.from_pretrained(tiny_sd_path)
    assert sd.special_tokens() == (1, 1)  # CLIP: <|startoftext|> ... <|endoftext|>
    assert pipes[1].get_indices("A Red Circle") == {0: "a", 1: "red", 2: "circle", 3: "</s>"}  # as PixArt lower-cases


@needs_spacy
def test_subjects_and_modifier_sets_are_t5_positions(pipes):
    assert pipes[1].subject_indices(PROMPT) == [(2,), (6,)]
    out = pipes[1](PROMPT, max_iter_to_alter=1, **tiny_call_arguments("pixart"))
    assert out.token_indices == [[(2,), (6,)]]
    sets = pipes[2].set_indices(pipes[2].parse_modifiers(PROMPT), 7)
    assert [(s.noun, s.modifiers, s.unrelated) for s in sets] == [
        ((2,), ((1,),), (0, 3, 4, 5, 6)), ((6,), ((5,),), (0, 1, 2, 3, 4))]
    out = pipes[2](PROMPT, num_intervention_steps=2, syngen_step_size=1e5, **tiny_call_arguments("pixart"))
    assert [h["index"] for h in out.guidance_log] == [0, 1]
    assert all(torch.isfinite(torch.tensor(h["grad_rms"])).all() for h in out.guidance_log)


@needs_spacy
def test_words_past_max_sequence_length_are_dropped(pipes):
    call = {**pipes[1].default_call(), "max_sequence_length": 4}  # 3 prompt tokens and </s> reach attention
    assert pipes[1].subject_indices(PROMPT, call) == [(2,)]
    assert pipes[2].set_indices(pipes[2].parse_modifiers(PROMPT), 3)[0].noun == (2,)
    assert len(pipes[2].set_indices(pipes[2].parse_modifiers(PROMPT), 3)) == 1
    with pytest.raises(ValueError, match=r"\[6\] are not prompt tokens \(0\.\.2\)"):
        _run(pipes[1], token_indices=NOUNS, max_sequence_length=4)


def test_softmax_spans_the_unmasked_keys(pipes):
    """T5's padding keys are masked (probability 0): the token softmax spans the prompt and </s> only."""
    call = pipes[1].default_call()
    assert pipes[1].softmax_keys(call, [PROMPT, "a dog"], 2) == [(0, 8), (0, 3)]
    embeds, mask, _, _ = pipes[1].encode_prompt(PROMPT, False, max_sequence_length=16, clean_caption=False)
    with_embeds = {**call, "prompt_attention_mask": mask}
    assert pipes[1].softmax_keys(with_embeds, None, 1) == [(0, 8)]


def test_prompt_embeds_with_token_indices_guide_as_the_prompt(pipes):
    """The same loss and gradient; the images agree to float noise (stock PixArt's own prompt_embeds path does
    not reproduce its prompt path bit for bit either)."""
    embeds, mask, _, _ = pipes[1].encode_prompt(PROMPT, False, max_sequence_length=16, clean_caption=False)
    guided = dict(token_indices=NOUNS, max_iter_to_alter=1, thresholds={}, scale_factor=1e5)
    from_embeds = pipes[1](prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, **guided,
                           **tiny_call_arguments("pixart"))
    from_prompt = pipes[1](PROMPT, **guided, **tiny_call_arguments("pixart"))
    assert from_embeds.guidance_log == from_prompt.guidance_log
    torch.testing.assert_close(from_embeds.images, from_prompt.images, atol=1e-3, rtol=1e-4)


def test_user_callback_keeps_its_cadence_and_sees_the_loop_latents(pipes):
    seen = []
    _run(pipes[1], token_indices=NOUNS, max_iter_to_alter=2, thresholds={}, scale_factor=1e5, num_inference_steps=3,
         callback=lambda step, t, latents: seen.append((step, tuple(latents.shape))), callback_steps=2)
    assert seen == [(0, (1, 4, 16, 24)), (2, (1, 4, 16, 24))]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(callback_steps=0), "callback_steps=0"),
        (dict(use_resolution_binning=True), "no aspect-ratio bins for a transformer of sample_size 16"),
        (dict(token_indices=[-1]), "token_indices"),
        (dict(attn_res=(9, 12)), r"attn_res=\(9, 12\) is finer than this model's token grid \(8, 12\)"),
    ],
)
def test_bad_arguments_raise_value_errors(pipes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(pipes[1], **{"token_indices": NOUNS, **kwargs})
    assert all(type(p).__module__.startswith("diffusers") for p in pipes[1].transformer.attn_processors.values())


def test_a_second_order_scheduler_is_refused_when_guided(pipes):
    heun = AttendAndExcitePixArtSigmaPipeline(**{**pipes[1].components,
                                                 "scheduler": HeunDiscreteScheduler.from_config(pipes[1].scheduler.config)})
    heun.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="scheduler=HeunDiscreteScheduler"):
        _run(heun, token_indices=NOUNS)


def _record(pipe, maps_controls):
    """One conditional transformer forward of PROMPT with ``maps_controls`` recording."""
    embeds, mask, _, _ = pipe.encode_prompt(PROMPT, False, max_sequence_length=16, clean_caption=False)
    latents = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    with AttentionController(maps_controls, rows=guidance_rows(1)).installed(pipe.transformer):
        for maps in maps_controls:
            maps.recording = True
        pipe.transformer(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                         timestep=torch.tensor([500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def test_pooled_maps_are_block_means_of_the_token_grid(pipes):
    """Reference: the unpooled maps of the same forward (every layer at the 8x12 grid), averaged over 2x2 blocks."""
    pooled, full = PooledGradientMaps((4, 6)), GradientMaps((8, 12), stop_early=False)
    _record(pipes[1], [pooled, full])
    grid = full.maps()  # (1, 16, 8, 12)
    blocks = grid.reshape(1, 16, 4, 2, 6, 2).mean(dim=(3, 5))
    torch.testing.assert_close(pooled.maps(), blocks, atol=1e-7, rtol=0)
    default = PooledGradientMaps()
    _record(pipes[1], [default])
    assert default.maps().shape == (1, 16, 8, 12)  # a quarter of the 16x24 latent is coarser than 16: the token grid


def test_default_pooled_grid_is_a_quarter_of_the_latent():
    """At 1024 px PixArt-Sigma's latent is 128x128 and its token grid 64x64: the maps are pooled to 32x32, the
    cells A&E's 16x16 maps have on SD at 512 px (32 px each); at 512 px (latent 64) the paper's 16x16."""
    for latent, grid, expected in (((128, 128), (64, 64), (32, 32)), ((64, 64), (32, 32), (16, 16))):
        maps = PooledGradientMaps()
        maps._latent_hw, maps._grid = latent, grid  # as a forward of that size leaves them
        maps._probs = [torch.rand(1, 2, grid[0] * grid[1], 5)]
        assert tuple(maps.maps().shape[-2:]) == expected
