"""The locally written CLIP tokenizer: every listed word is one token, anything else still tokenizes."""

from __future__ import annotations

from transformers import CLIPTokenizer

from attnctl.models.tokenizer import apply_merges, build_vocab, write_clip_tokenizer

WORDS = ["a", "an", "and", "orange", "triangle", "banana", "band", "circle", "red"]


def test_every_listed_word_is_a_single_token(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, WORDS))
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("A Red banana and an orange triangle!").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red banana and an orange triangle !"


def test_unlisted_words_fall_apart_into_several_tokens(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, WORDS))
    assert len(tokenizer.tokenize("zebrafish")) > 1


def test_merges_replay_like_the_real_tokenizer():
    vocab, merges = build_vocab(WORDS)
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    assert apply_merges(list("orang") + ["e</w>"], ranks) == ["orange</w>"]
    assert all(piece in vocab for piece in apply_merges(list("bandana") + ["s</w>"], ranks))
