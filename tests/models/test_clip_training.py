"""The CLIP model's training pieces: tokenizer, contrastive loss, twin retrieval, held-out compositions,
weights-only checkpoints and the frozen text tower, each against a literal or stock computation."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnctl.models.contrastive import build_clip, clip_step_loss, contrastive_loss, twin_retrieval
from attnctl.models.training import Checkpointer, build_tokenizer, encode_captions, learning_rate, tokenize
from attnctl.shapes.compositions import (
    HELD_OUT_COMPOSITIONS,
    held_out_composition_prompts,
    is_training_composition,
    reordered,
    sample_composition_training_scene,
    seen_twin_prompts,
    swapped,
    swapped_twin_prompt,
)
from attnctl.shapes.scene import CAPTION_WORDS, COLOURS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_clip_model.py"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_clip_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_caption_word_is_one_token(tokenizer):
    for word in CAPTION_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenize(tokenizer, ["a small orange triangle to the left of a purple star"])[0]
    assert ids.shape == (24,)
    assert (ids != tokenizer.eos_token_id).sum() == 1 + 11  # BOS + eleven words, then end/padding tokens


def test_contrastive_loss_matches_a_literal_computation():
    torch.manual_seed(0)
    images, texts, scale = torch.randn(3, 5), torch.randn(3, 5), torch.tensor(math.log(10.0))

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    logits = [[10.0 * cos(images[i].tolist(), texts[j].tolist()) for j in range(3)] for i in range(3)]
    image_to_text = [-logits[i][i] + math.log(sum(math.exp(x) for x in logits[i])) for i in range(3)]
    text_to_image = [
        -logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(3))) for j in range(3)
    ]
    expected = (sum(image_to_text) + sum(text_to_image)) / 6
    assert contrastive_loss(images, texts, scale).item() == pytest.approx(expected, rel=1e-5)


def test_twin_retrieval_on_a_hand_built_case():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    correct = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.6, 0.8]])
    twins = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.6, 0.8]])  # last: a bag-of-words tie
    assert twin_retrieval(queries, correct, twins).tolist() == [True, True, False]


def test_held_out_compositions_are_unseen_and_their_twins_seen():
    assert len(HELD_OUT_COMPOSITIONS) == 3 * 6
    assert not any(is_training_composition(held) for held in HELD_OUT_COMPOSITIONS)
    assert all(is_training_composition(swapped(held)) for held in HELD_OUT_COMPOSITIONS)
    assert swapped({("green", "circle"), ("red", "square")}) == {("green", "square"), ("red", "circle")}
    rng = np.random.default_rng(0)
    scenes = [sample_composition_training_scene(rng) for _ in range(600)]
    assert all(is_training_composition((o.colour, o.shape) for o in s.objects) for s in scenes)
    pairs = {frozenset(o.colour for o in s.objects) for s in scenes if len(s.objects) == 2}
    assert pairs == {frozenset(p) for p in itertools.combinations(COLOURS, 2)}  # every colour pair is seen


def test_prompt_sets_twins_and_reorderings():
    held, seen = held_out_composition_prompts(), seen_twin_prompts()
    assert len(held) == len(seen) == 180
    assert held[0].prompt == "a green circle and a red square"
    assert swapped_twin_prompt(held[0]).prompt == "a red circle and a green square"
    left = next(p for p in held if " to the left of " in p.prompt)
    assert reordered(left) == "a red square to the right of a green circle"
    assert sorted(left.prompt.split()) == sorted(swapped_twin_prompt(left).prompt.split())  # same bag of words
    assert {frozenset(p.objects) for p in seen} == {swapped(h) for h in HELD_OUT_COMPOSITIONS}


def test_learning_rate_warms_up_then_decays_on_a_half_cosine():
    assert learning_rate(0, 1.0, 10) == pytest.approx(0.1)
    assert learning_rate(500, 1.0, 10) == 1.0  # constant without a decay
    decay = (100, 300)
    assert learning_rate(99, 1.0, 10, decay) == 1.0
    assert learning_rate(100, 1.0, 10, decay) == 1.0
    assert learning_rate(200, 1.0, 10, decay) == pytest.approx(0.5)
    assert learning_rate(300, 1.0, 10, decay) == pytest.approx(0.0, abs=1e-12)
    rates = [learning_rate(step, 1.0, 10, decay) for step in range(100, 301)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(1e-6, 1.0),
    warmup=st.integers(1, 500),
    start=st.integers(0, 2000),
    length=st.integers(0, 2000),
    step=st.integers(0, 5000),
)
def test_learning_rate_stays_within_its_base_and_never_rises_after_warm_up(base, warmup, start, length, step):
    decay = (start, start + length)
    rate = learning_rate(step, base, warmup, decay)
    assert 0.0 <= rate <= base * (1 + 1e-12)
    if step + 1 >= warmup:
        assert learning_rate(step + 1, base, warmup, decay) <= rate * (1 + 1e-12)
    if step >= start + length:
        assert rate == pytest.approx(0.0, abs=base * 1e-12)


def test_step_and_size_options_must_be_whole_numbers_in_range(script, capsys):
    for option, bad, reason in (("--decay-start", "-5", "-5 is below 0"), ("--unet-steps", "1e3", "'1e3' is not a whole"),
                                ("--warmup", "0", "0 is below 1"), ("--clip-batch-size", "1", "1 is below 2")):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            script.parse_args([option, bad])
        assert stop.value.code == 2 and f"argument {option}: {reason}" in capsys.readouterr().err
    assert script.parse_args([]).decay_start == 1000 and script.parse_args(["--decay-start", "0"]).decay_start == 0


def test_checkpoints_load_weights_only(tmp_path):
    checkpointer = Checkpointer(tmp_path / "state.pt", minutes=1)
    assert checkpointer.load(default={"step": 0}) == {"step": 0}
    checkpointer.save({"step": 3, "weights": torch.ones(2), "args": {"seed": "0"}})
    state = checkpointer.load(default={})
    assert state["step"] == 3 and torch.equal(state["weights"], torch.ones(2))
    checkpointer.save({"step": 4, "object": Path("x")})  # an arbitrary object is not weights
    with pytest.raises(Exception, match="Weights only load failed"):
        checkpointer.load(default={})


def test_frozen_text_encoder_is_the_clip_text_tower(tokenizer, script):
    torch.manual_seed(0)
    clip = build_clip(tokenizer)
    text_encoder = script.frozen_text_encoder(clip, tokenizer)
    captions = ["a red circle and a blue square", ""]
    states = encode_captions(tokenizer, text_encoder, captions)  # as StableDiffusionPipeline encodes
    assert torch.equal(states, clip.text_model(tokenize(tokenizer, captions)).last_hidden_state)
    assert not any(p.requires_grad for p in text_encoder.parameters())


def test_clip_phase_trains_resumes_and_is_reproducible(tokenizer, script, tmp_path):
    def run(out, steps):
        torch.manual_seed(0)
        clip = build_clip(tokenizer)
        args = script.parse_args(["--out", str(out), "--clip-steps", str(steps), "--clip-batch-size", "4"])
        checkpointer = Checkpointer(out / "checkpoint.pt", minutes=60)
        out.mkdir(exist_ok=True)
        state = checkpointer.load(default={"phase": "clip", "step": 0})
        if "clip" in state:
            clip.load_state_dict(state["clip"])
        script.train_clip(args, clip, tokenizer, state, checkpointer, deadline=math.inf)
        return clip

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 2)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    images, captions = script.training_batch(0, "clip", 0, 4)
    assert images.shape == (4, 3, 64, 64) and len(captions) == 4
    assert torch.isfinite(clip_step_loss(straight, tokenizer, images, captions))


def test_token_positions_line_up_across_tokenizers(tokenizer, script, tmp_path):
    from transformers import CLIPTokenizer

    from attnctl.models.tokenizer import write_clip_tokenizer

    assert script.aligned_positions(tokenizer, "a small orange star") == ([0, 1, 2, 3, 4], list(range(5, 24)))
    # a vocabulary without "orange" splits it into single letters: its last letter stands for the word
    letters = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, ["a", "small", "star"]))
    assert script.aligned_positions(letters, "a small orange star") == ([0, 1, 2, 8, 9], list(range(10, 24)))


def test_text_bridge_of_an_encoder_onto_itself_reproduces_its_states(tokenizer, script):
    torch.manual_seed(0)
    text_encoder = script.frozen_text_encoder(build_clip(tokenizer), tokenizer)
    captions = script.training_batch(0, "bridge", 0, 40)[1] + [""]
    bridge = script.text_bridge(text_encoder, tokenizer, text_encoder, tokenizer, captions)  # (64, 64)
    with torch.no_grad():
        states = encode_captions(tokenizer, text_encoder, ["a red circle above a blue star", ""])
    assert torch.allclose(states @ bridge, states, atol=1e-4)  # layer-normed states span 63 dims: A != I
