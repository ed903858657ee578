"""The run manifest: one JSON line per finished output, keyed by the output's path under ``--out``.

While a run works, each process appends a line per finished item to its own journal,
``<out>/.attnctl/manifest.part-<process>.jsonl``, flushed and fsynced, so a crash loses at most the line
being written. A torn last line is ignored on reading, and the next append starts on a new line so it never
glues a good record to the torn one. Lines that are not records (bad JSON, a path that is not a relative
path inside ``--out``, fields of the wrong type) are skipped, so one damaged line never stops a later run. At
the end the main process merges the old
``manifest.jsonl`` and every journal into a new ``manifest.jsonl`` (atomically), keeping per path the record
finished last and dropping records whose file is gone, and then deletes the journals. A rerun reads the same
files to decide which items are finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import write_text_atomic

MANIFEST = "manifest.jsonl"
STATE_DIR = ".attnctl"


def journal_path(out: Path, process_index: int) -> Path:
    """Where process ``process_index`` journals its finished items."""
    return out / STATE_DIR / f"manifest.part-{process_index}.jsonl"


class Journal:
    """Append-only journal of one process: one fsynced JSON line per finished item."""

    def __init__(self, out: Path, process_index: int) -> None:
        self.path = journal_path(out, process_index)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and make it durable before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            torn = False
            if handle.seek(0, os.SEEK_END) > 0:  # a crash may have left a last line without its newline
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
            line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
            handle.write((b"\n" if torn else b"") + line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def is_record(record: Any) -> bool:
    """Whether ``record`` is a usable manifest record: a relative path inside ``--out`` and well-typed fields."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
        return False
    path = PurePosixPath(record["path"])
    if path.is_absolute() or ".." in path.parts or "\\" in record["path"]:
        return False
    typed = {"finished_at": str, "fingerprint": str, "entry": int, "sample": int}
    return all(isinstance(record[key], kind) and not isinstance(record[key], bool)
               for key, kind in typed.items() if key in record)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of ``path``, skipping lines that are not records (torn by a crash, or damaged)."""
    with open(path, "rb") as handle:
        for line in handle:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if is_record(record):
                yield record


def _sources(out: Path) -> list[Path]:
    manifest = out / MANIFEST
    journals = sorted((out / STATE_DIR).glob("manifest.part-*.jsonl"))
    return ([manifest] if manifest.is_file() else []) + journals


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """Path -> record over ``manifest.jsonl`` and all journals; the record finished last wins."""
    records: dict[str, dict[str, Any]] = {}
    for source in _sources(out):
        for record in _read_jsonl(source):
            old = records.get(record["path"])
            if old is None or record.get("finished_at", "") >= old.get("finished_at", ""):
                records[record["path"]] = record
    return records


def merge_manifest(out: Path) -> int:
    """Fold the journals into ``manifest.jsonl`` (main process, after every process finished); returns its size."""
    journals = _sources(out)[1:] if (out / MANIFEST).is_file() else _sources(out)
    records = [r for r in read_records(out).values() if (out / r["path"]).is_file()]
    records.sort(key=lambda r: (r.get("entry", 0), r.get("sample", 0), r["path"]))
    lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    write_text_atomic(out / MANIFEST, lines)
    for journal in journals:
        journal.unlink()
    return len(records)
