"""Token positions of words in a prompt, found with the model's own tokenizer.

The release marks subject words with ``<ref>`` and counts whitespace words, which breaks on multi-token words and
punctuation (reference notes Sec. 1.8); here a phrase's token ids are searched as a contiguous run in the
tokenised prompt, so positions match the encoder sequence the cross-attention keys come from.
"""

from __future__ import annotations

from collections.abc import Sequence


def phrase_token_indices(tokenizer, prompt: str, phrase: str, first: int = 1, max_length: int | None = None
                         ) -> list[int]:
    """Positions of every occurrence of ``phrase``'s tokens in ``prompt``; ``[]`` if absent.

    ``first`` is the position of the prompt's first word: 1 after CLIP's start token, 0 for T5, which has none.
    ``max_length``: the encoder's sequence length (default: the tokenizer's ``model_max_length``).
    """
    prompt_ids = tokenizer(prompt, truncation=True, max_length=max_length or tokenizer.model_max_length).input_ids
    phrase_ids = tokenizer(phrase, add_special_tokens=False).input_ids
    if not phrase_ids:
        return []
    width = len(phrase_ids)
    found: list[int] = []
    for start in range(first, len(prompt_ids) - width + 1):
        if prompt_ids[start:start + width] == phrase_ids:
            found.extend(range(start, start + width))
    return found


def words_token_indices(tokenizer, prompt: str, words: str | Sequence[str], name: str, first: int = 1,
                        max_length: int | None = None) -> list[int]:
    """Sorted token positions of all ``words`` (each a word or phrase) in ``prompt``; raises if one is missing."""
    phrases = [words] if isinstance(words, str) else list(words)
    if not phrases:
        raise ValueError(f"{name} is empty; name at least one word of the prompt")
    indices: set[int] = set()
    for phrase in phrases:
        found = phrase_token_indices(tokenizer, prompt, phrase, first, max_length)
        if not found:
            raise ValueError(
                f"{name}: {phrase!r} does not occur in prompt={prompt!r}; use words that appear in the prompt "
                "(or pass token indices)"
            )
        indices.update(found)
    return sorted(indices)


def check_token_indices(indices: Sequence[int], max_length: int, name: str, first: int = 1) -> list[int]:
    """Validate explicit token positions: integers in ``[first, max_length - 1]`` (CLIP: 0 is the start token)."""
    values = [int(i) for i in indices]
    if not values or any(i < first or i >= max_length for i in values):
        raise ValueError(f"{name}={list(indices)} must be non-empty positions in [{first}, {max_length - 1}]")
    return sorted(set(values))
