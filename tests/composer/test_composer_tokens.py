"""Subject token positions from the tokenizer (multi-token words included) and their errors."""

from __future__ import annotations

import pytest

from attnctl.composer import check_token_indices, phrase_token_indices, words_token_indices
from attnctl.models.tiny import build_tiny_sd_components


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_sd_components()["tokenizer"]


def test_single_words_and_phrases_map_to_their_positions(tokenizer):
    prompt = "a red dog sitting on a bench, a red car"
    assert phrase_token_indices(tokenizer, prompt, "dog") == [3]
    assert phrase_token_indices(tokenizer, prompt, "red car") == [10, 11]
    assert phrase_token_indices(tokenizer, prompt, "red") == [2, 10]  # every occurrence
    assert words_token_indices(tokenizer, prompt, ["dog", "bench"], "subject_words") == [3, 7]


def test_multi_token_words_cover_all_their_pieces(tokenizer):
    # "zebra" is not in the tiny vocabulary, so it splits into several byte-level tokens
    pieces = tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    assert phrase_token_indices(tokenizer, "a zebra on a bench", "zebra") == list(range(2, 2 + len(pieces)))


def test_whole_words_only(tokenizer):
    assert phrase_token_indices(tokenizer, "a catalog on a table", "cat") == []


def test_missing_words_and_bad_indices_raise(tokenizer):
    with pytest.raises(ValueError, match="subject_words: 'cat' does not occur in prompt='a dog'"):
        words_token_indices(tokenizer, "a dog", "cat", "subject_words")
    with pytest.raises(ValueError, match="subject_words is empty"):
        words_token_indices(tokenizer, "a dog", [], "subject_words")
    with pytest.raises(ValueError, match=r"must be non-empty positions in \[1, 76\]"):
        check_token_indices([0, 3], 77, "subject_token_indices")
    assert check_token_indices([4, 2, 4], 77, "subject_token_indices") == [2, 4]
