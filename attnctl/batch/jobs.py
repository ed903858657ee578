"""Job files: one prompt a line (``.txt``) or one JSON object a line with per-line overrides (``.jsonl``).

Blank lines and lines starting with ``#`` are skipped. Every other line is an *entry* and gets the next entry
index (0, 1, 2, ...), also when it is malformed, so fixing or appending lines never renumbers the others:
the entry index feeds seeds and output names. A malformed line becomes a :class:`JobError` carrying its line
number; the rest of the file is still read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import FIELDS, validate_field

JOB_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Job:
    """One valid entry of a job file: its entry index, 1-based line number and validated fields."""

    entry: int
    line: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.fields["prompt"]


@dataclass(frozen=True)
class JobError:
    """A line that could not be used, with the place and the reason, printed as ``file:line: reason``."""

    source: str
    line: int
    entry: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


def validate_fields(raw: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Validate every field of ``raw``; input files are resolved against ``base_dir`` and must exist."""
    fields = {}
    for name, value in raw.items():
        value = validate_field(name, value)
        if FIELDS[name].is_path:
            path = (base_dir / value).expanduser()
            if not path.is_file():
                raise ValueError(f"{name}: file not found: {path}")
            value = str(path.resolve())
        fields[name] = value
    return fields


def _raw_fields(text: str, json_lines: bool) -> dict[str, Any]:
    """The fields a line sets before validation: a ``.txt`` line is a prompt up to its first tab."""
    if not json_lines:
        # T2I-CompBench's prompt files carry extra tab-separated columns after the prompt.
        return {"prompt": text.split("\t", 1)[0].strip()}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply; a job line is one flat object of fields") from None
    if not isinstance(raw, dict):
        raise ValueError(f'expected a JSON object such as {{"prompt": "a red car"}}, got {type(raw).__name__}')
    return raw


def parse_lines(
    lines: Iterable[bytes | str],
    source: str,
    json_lines: bool,
    base_dir: Path,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[list[Job], list[JobError]]:
    """Jobs and errors of ``lines``; ``defaults`` (already validated) fill the fields a line leaves out."""
    jobs, errors = [], []
    entry = 0
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
        except UnicodeDecodeError as err:
            errors.append(JobError(source, number, entry, f"not valid UTF-8 (byte {err.start})"))
            entry += 1
            continue
        text = text.lstrip("\ufeff").strip()
        if not text or text.startswith("#"):
            continue
        try:
            fields = {**(defaults or {}), **validate_fields(_raw_fields(text, json_lines), base_dir)}
            if "prompt" not in fields:
                raise ValueError('missing "prompt"')
            jobs.append(Job(entry, number, fields))
        except ValueError as err:
            errors.append(JobError(source, number, entry, str(err)))
        entry += 1
    return jobs, errors


def read_job_file(
    path: Path, defaults: Mapping[str, Any] | None = None
) -> tuple[list[Job], list[JobError]]:
    """Jobs and line-numbered errors of a ``.txt`` or ``.jsonl`` file (paths in it are relative to its folder)."""
    if path.suffix.lower() not in JOB_SUFFIXES:
        raise ValueError(f"--prompts {path}: expected a .txt (one prompt a line) or .jsonl file")
    with open(path, "rb") as handle:
        lines = handle.read().splitlines()
    return parse_lines(lines, path.name, path.suffix.lower() == ".jsonl", path.parent, defaults)
