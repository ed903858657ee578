"""Subject nouns (Attend-and-Excite) and modifier sets (SynGen) from the one spaCy parser of attnctl.structured."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from attnctl.models.tiny import TINY_WORDS
from attnctl.models.tokenizer import write_clip_tokenizer
from attnctl.structured import load_english_pipeline
from attnctl.structured.phrases import modifier_sets, prompt_token_count, subject_words

nlp = load_english_pipeline()
pytestmark = pytest.mark.skipif(nlp is None, reason="no English spaCy pipeline installed")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok"), TINY_WORDS))


def _sets(prompt, tokenizer):
    return [(tuple(m.text for m in s.modifiers), s.noun.text) for s in modifier_sets(prompt, tokenizer)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle and a blue square", [(("red",), "circle"), (("blue",), "square")]),  # coordinated nouns
        ("a red and blue table", [(("red", "blue"), "table")]),  # coordinated adjectives, cc dropped
        ("a checkered bowl on a red and blue table", [(("checkered",), "bowl"), (("red", "blue"), "table")]),
        ("a very tall man with a blue hat", [(("very", "tall"), "man"), (("blue",), "hat")]),  # advmod, PP
        ("a red circle to the left of a green square", [(("red",), "circle"), (("green",), "square")]),
        ("the car is red", [(("red",), "car")]),  # copula: the noun stays the noun (release: [car, red])
        ("a dog that is red", [(("red",), "dog")]),  # relative clause
        ("a stone wall", [(("stone",), "wall")]),  # compound; a compound never heads its own set
        ("a dog and a cat", []),  # nouns without modifiers
    ],
)
def test_modifier_sets(prompt, expected, tokenizer):
    assert _sets(prompt, tokenizer) == expected


def test_words_are_placed_by_position_with_all_their_pieces(tokenizer):
    # "checkered" is not in the tiny vocabulary: the tokenizer splits it and the word keeps every piece
    (checkered_set, table_set) = modifier_sets("A checkered bowl on a red and blue table.", tokenizer)
    pieces = checkered_set.modifiers[0]
    assert len(pieces.indices) > 1 and pieces.indices[0] == 2
    ids = tokenizer("a checkered bowl on a red and blue table").input_ids
    assert tokenizer.decode(ids[pieces.indices[0] : pieces.indices[-1] + 1]).replace(" ", "") == "checkered"
    assert tokenizer.decode([ids[table_set.noun.indices[0]]]).strip() == "table"
    # repeated noun: "red" binds to the second car, by position (the release takes the first occurrence)
    (red_car,) = modifier_sets("a car and a red car", tokenizer)
    assert red_car.noun.indices == (6,) and red_car.modifiers[0].indices == (5,)


@pytest.mark.parametrize(
    ("prompt", "subjects"),
    [
        ("a red circle and a blue square", ["circle", "square"]),
        ("a red circle to the left of a green square", ["circle", "square"]),  # "left" is relational
        ("a small green triangle above a yellow star", ["triangle", "star"]),
        ("a purple star and a large orange circle and a blue triangle", ["star", "circle", "triangle"]),
        ("a stone wall", ["wall"]),
    ],
)
def test_subject_words(prompt, subjects, tokenizer):
    assert [w.text for w in subject_words(prompt, tokenizer)] == subjects


def test_subject_indices_point_at_the_nouns(tokenizer):
    prompt = "a red circle and a blue square"
    ids = tokenizer(prompt).input_ids
    assert [w.indices for w in subject_words(prompt, tokenizer)] == [(3,), (7,)]
    assert [tokenizer.decode([ids[i]]).strip() for i in (3, 7)] == ["circle", "square"]
    assert prompt_token_count(prompt, tokenizer) == 7
