"""AttendAndExcitePipeline and SynGenPipeline on the tiny SD model: off equals stock, arguments, exceptions.
The "off" checks run on the tiny PixArt-Sigma too (its own method tests: test_binding_pixart.py)."""

from __future__ import annotations

import inspect

import pytest
import torch

from attnctl import AttendAndExcitePipeline
from attnctl.models.tiny_families import tiny_call_arguments
from attnctl.structured import load_english_pipeline

needs_spacy = pytest.mark.skipif(load_english_pipeline() is None, reason="no English spaCy pipeline installed")
PROMPT = "a red circle and a blue square"
CALL = dict(num_inference_steps=2, output_type="pt", height=64, width=64)
# per family: the call's own arguments and the keys of "circle" and "square" (CLIP: after the start token)
FAMILY_CALLS = {"sd": (CALL, [3, 7]), "pixart": ({**tiny_call_arguments("pixart"), "output_type": "pt"}, [2, 6])}


@pytest.fixture(scope="module")
def pipes(sd_pipes):
    return sd_pipes


def _run(pipe, call=CALL, **kwargs):
    return pipe(PROMPT, **{**call, "generator": torch.Generator().manual_seed(0), **kwargs}).images


@pytest.fixture(scope="module")
def stock_images(pipes):
    return _run(pipes[0])


@pytest.fixture(scope="module", params=list(FAMILY_CALLS))
def family(request):
    """(pipes, call, subject keys, stock images) of one family."""
    pipes = request.getfixturevalue(f"{request.param}_pipes")
    call, nouns = FAMILY_CALLS[request.param]
    return pipes, call, nouns, _run(pipes[0], call)


@pytest.mark.parametrize(
    "off",
    [
        lambda nouns: dict(token_indices=nouns, max_iter_to_alter=0, thresholds={}),
        lambda nouns: dict(token_indices=nouns, scale_factor=0),
        lambda nouns: dict(token_indices=[]),
    ],
    ids=["no-steps", "zero-step-size", "no-subjects"],
)
def test_attend_excite_off_equals_stock(family, off):
    pipes, call, nouns, stock = family
    assert torch.equal(_run(pipes[1], call, **off(nouns)), stock)


@needs_spacy
@pytest.mark.parametrize("kwargs", [dict(syngen_step_size=0), dict(num_intervention_steps=0)])
def test_syngen_off_equals_stock(family, kwargs):
    pipes, call, _, stock = family
    assert torch.equal(_run(pipes[2], call, **kwargs), stock)


def test_guided_path_with_no_update_equals_stock(family):
    """The whole machinery runs (own latents, extra encoding, guidance forward, the step callback: PixArt's
    legacy one writes in place) but never moves z: a threshold no subject can miss (level 0), no regular update."""
    pipes, call, nouns, stock = family
    out = pipes[1](PROMPT, **{**call, "generator": torch.Generator().manual_seed(0)}, token_indices=nouns,
                   max_iter_to_alter=0, thresholds={0: 0.0})
    assert [h["index"] for h in out.guidance_log] == [0]
    assert torch.equal(out.images, stock)


def test_attend_excite_moves_the_image_deterministically(pipes, stock_images):
    first = _run(pipes[1], token_indices=[3, 7], scale_factor=1e5)
    assert not torch.equal(first, stock_images)
    assert torch.equal(first, _run(pipes[1], token_indices=[3, 7], scale_factor=1e5))


def test_diffusers_argument_names_are_accepted(pipes):
    from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
        StableDiffusionAttendAndExcitePipeline,
    )

    ours = AttendAndExcitePipeline.__call__
    theirs = inspect.signature(StableDiffusionAttendAndExcitePipeline.__call__).parameters
    for name in ("token_indices", "max_iter_to_alter", "thresholds", "scale_factor", "attn_res"):
        assert name in inspect.signature(ours).parameters and name in theirs
    out = pipes[1](
        prompt=PROMPT, token_indices=[3, 7], height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
        negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=torch.Generator().manual_seed(0),
        latents=None, output_type="pt", return_dict=True, cross_attention_kwargs=None, max_iter_to_alter=2,
        thresholds={0: 0.05, 10: 0.5, 20: 0.8}, scale_factor=20, attn_res=(16, 16), clip_skip=None,
    )
    assert out.token_indices == [[(3,), (7,)]] and out.images.shape == (1, 3, 64, 64)
    assert {h["index"] for h in out.guidance_log} == {0, 1}


@needs_spacy
def test_subjects_and_modifier_sets_come_from_the_parse(pipes):
    assert pipes[1].subject_indices(PROMPT) == [(3,), (7,)]
    out = pipes[1](PROMPT, max_iter_to_alter=1, generator=torch.Generator().manual_seed(0), **CALL)
    assert out.token_indices == [[(3,), (7,)]]
    out = pipes[2](PROMPT, num_intervention_steps=1, generator=torch.Generator().manual_seed(0), **CALL)
    assert [(s.modifiers[0].text, s.noun.text) for s in out.modifier_sets[0]] == [("red", "circle"), ("blue", "square")]
    assert [h["index"] for h in out.guidance_log] == [0]


def test_batches_get_one_subject_list_per_prompt(pipes):
    out = pipes[1](["a red circle", "a dog and a cat"], token_indices=[[3], [2, 5]], num_images_per_prompt=2,
                   max_iter_to_alter=1, generator=torch.Generator().manual_seed(0), **CALL)
    assert out.images.shape[0] == 4 and len(out.guidance_log[0]["loss"]) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(token_indices=[0]), "token_indices"),
        (dict(token_indices=[3, 99]), "token_indices"),
        (dict(token_indices=[[3], [7]]), "token_indices"),
        (dict(max_iter_to_alter=-1), "max_iter_to_alter"),
        (dict(thresholds={0: 2.0}), "thresholds"),
        (dict(scale_factor=-1), "scale_factor"),
        (dict(token_indices=[3], attn_res=(5, 5)), r"attn_res=\(5, 5\)"),
    ],
)
def test_bad_arguments_raise_value_errors(pipes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(pipes[1], **kwargs)


@pytest.mark.parametrize("which", [1, 2])
def test_processors_restored_after_an_exception_in_the_callback(pipes, which):
    pipe = pipes[which]
    before = dict(pipe.unet.attn_processors)

    def failing(pipe, step, timestep, kwargs):
        raise RuntimeError("callback failed")

    kwargs = dict(token_indices=[3, 7]) if which == 1 else {}
    with pytest.raises(RuntimeError, match="callback failed"):
        _run(pipe, callback_on_step_end=failing, **kwargs)
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_user_callback_still_sees_its_tensors(pipes):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(sorted(kwargs))
        return kwargs

    _run(pipes[1], token_indices=[3], max_iter_to_alter=1, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen == [["latents", "prompt_embeds"]] * 2


@needs_spacy
def test_sdxl_variants_dispatch_run_and_equal_stock_when_off(tiny_sdxl_path):
    from diffusers import StableDiffusionXLPipeline

    from attnctl import AttendAndExciteXLPipeline, SynGenXLPipeline

    ae = AttendAndExcitePipeline.from_pretrained(tiny_sdxl_path)  # the family's variant, as from_pretrained picks
    assert isinstance(ae, AttendAndExciteXLPipeline)
    stock = StableDiffusionXLPipeline(**ae.components)
    syngen = SynGenXLPipeline(**ae.components)
    for pipe in (ae, stock, syngen):
        pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=2, output_type="pt")
    base = stock(PROMPT, generator=torch.Generator().manual_seed(0), **call).images
    off = ae(PROMPT, scale_factor=0, generator=torch.Generator().manual_seed(0), **call).images
    assert torch.equal(off, base)
    guided = ae(PROMPT, max_iter_to_alter=1, thresholds={}, scale_factor=1e5, generator=torch.Generator().manual_seed(0), **call)
    assert [h["index"] for h in guided.guidance_log] == [0] and not torch.equal(guided.images, base)
    out = syngen(PROMPT, num_intervention_steps=1, generator=torch.Generator().manual_seed(0), **call)
    assert [h["index"] for h in out.guidance_log] == [0] and len(out.modifier_sets[0]) == 2
