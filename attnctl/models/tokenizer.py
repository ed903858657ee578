"""Write a CLIP byte-level BPE tokenizer (vocab.json + merges.txt) for a chosen word list.

Nothing can be downloaded here, so test and embedded models carry their own vocabulary: every byte symbol,
so any text tokenizes, plus merges that make each listed word a single token. Words outside the list fall
apart into several tokens, which is what multi-token span handling needs to be tested against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table, built here)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return tuple(table[b] for b in range(256))


def apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the lowest-ranked adjacent pair until none is left (GPT-2's rule)."""
    pieces = list(pieces)
    while len(pieces) > 1:
        rank, first = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == math.inf:
            break
        best = (pieces[first], pieces[first + 1])
        merged, index = [], 0
        while index < len(pieces):
            if index + 1 < len(pieces) and (pieces[index], pieces[index + 1]) == best:
                merged.append(pieces[index] + pieces[index + 1])
                index += 2
            else:
                merged.append(pieces[index])
                index += 1
        pieces = merged
    return pieces


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and ranked merges such that each of ``words`` (lower-case ASCII) is one token.

    Each word is first encoded with the merges made so far; merges joining the resulting pieces left to right
    are then appended. New merges rank after all earlier ones, so they never change how an earlier word
    encodes, and every listed word ends up as a single token.
    """
    symbols = list(byte_symbols())
    tokens: list[str] = symbols + [s + SUFFIX for s in symbols]
    merges: list[str] = []
    seen_tokens, ranks = set(tokens), {}
    for word in sorted({w.lower() for w in words if w.strip()}):
        if not word.isascii() or not word.isalpha():
            raise ValueError(f"word {word!r}: only ASCII letters can be made single tokens")
        pieces = apply_merges(list(word[:-1]) + [word[-1] + SUFFIX], ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks[(current, piece)] = len(merges)
            merges.append(f"{current} {piece}")
            current = current + piece
            if current not in seen_tokens:
                seen_tokens.add(current)
                tokens.append(current)
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: str | Path, words: Iterable[str], model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` loadable by ``CLIPTokenizer``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
