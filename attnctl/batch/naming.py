"""Safe output names: prompts and user names turned into file names that stay inside ``--out``.

A name component never contains a path separator, a control character or a character Windows forbids, never
starts with a dot (so no ``..``, no hidden files), is NFC-normalised and is cut to a byte budget on a
character boundary. Names are made unique case-insensitively, so two prompts never share a file, also on
case-insensitive file systems.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

#: Bytes for one file name, leaving room under the usual 255-byte limit for the temporary-file affixes.
MAX_NAME_BYTES = 200
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f/\\<>:"|?*]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def truncate_bytes(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes`` bytes."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def safe_component(text: str, max_bytes: int = MAX_NAME_BYTES, replacement: str = " ") -> str:
    """``text`` as one safe file-name component (see the module docstring); ``"untitled"`` when nothing is left."""
    name = unicodedata.normalize("NFC", text)
    name = "".join(replacement if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in name)
    name = _FORBIDDEN.sub(replacement, name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    name = truncate_bytes(name, max_bytes).rstrip(" .")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    return name or "untitled"


def slug(text: str, max_bytes: int = 80) -> str:
    """A short, shell-friendly name for ``text``: :func:`safe_component` with underscores for spaces."""
    return safe_component(text, max_bytes).replace(" ", "_")


def _numbered(relative: str, k: int) -> str:
    """``relative`` with ``-k`` before its extension, the file name kept within :data:`MAX_NAME_BYTES`."""
    path = PurePosixPath(relative)
    suffix = f"-{k}{path.suffix}"
    stem = truncate_bytes(path.stem, MAX_NAME_BYTES - len(suffix.encode("utf-8")))
    return str(path.with_name(stem + suffix))


def make_unique(paths: Iterable[str]) -> list[str]:
    """``paths`` in order, each later duplicate (compared case-insensitively) renamed ``name-2.ext``, ``-3``..."""
    taken: set[str] = set()
    unique = []
    for path in paths:
        candidate, k = path, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = _numbered(path, k)
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing any path that would resolve outside ``root`` (defence in depth)."""
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / relative))
    if PurePosixPath(relative).is_absolute() or not target.is_relative_to(base):
        raise ValueError(f"output path {relative!r} escapes the output folder {root}")
    return base / relative
