"""Atomic file writes: write a hidden temporary file beside the target, fsync it, then ``os.replace`` it.

A reader (an evaluator, a resumed run) sees either the old file or the complete new one, never a partial
file. The temporary name starts with a dot, carries :data:`TEMP_MARK` and keeps the target's extension (so
writers that pick a format by extension, like imageio, work); a hard kill can leave one behind, and
:func:`remove_stale_temps` deletes those at the start of the next run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".attnctl-tmp-"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target``, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.stem[:40]}{TEMP_MARK}{secrets.token_hex(4)}{target.suffix}"
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")


def remove_stale_temps(root: Path) -> int:
    """Delete temporary files an interrupted run left under ``root``; returns how many were removed."""
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and TEMP_MARK in name:
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed
