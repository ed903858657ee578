"""Helpers for the CLI tests: run ``python -m attnctl`` in a subprocess, read outputs back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image


def run_attnctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300):
    """``python -m attnctl ARGS`` offline with one thread per process; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "attnctl", *args], capture_output=True, text=True, env=full_env, cwd=cwd,
        timeout=timeout,
    )


def manifest(out: Path) -> list[dict]:
    """The records of ``out/manifest.jsonl``."""
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def pixels(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def output_files(out: Path) -> list[str]:
    """Every file under ``out`` except the manifest, the summary and attnctl's state folder, sorted, relative."""
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*")
        if p.is_file() and p.name not in ("manifest.jsonl", "summary.json")
        and ".attnctl" not in p.relative_to(out).parts
    )
