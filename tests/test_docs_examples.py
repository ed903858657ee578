"""Every Python example in README.md and docs/*.md runs as written, offline, on the tiny or embedded models.

The blocks of one page run in order in one namespace and one fresh working folder, as a reader would paste
them. A block that cannot run here (it needs the Hub, a GPU, or is a signature summary) is marked in the page
with ``<!-- docs-test: skip, REASON -->`` on the line before its fence.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: skip, (?P<skip>[^\n]*?) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M
)


def python_blocks(page: Path) -> list[tuple[str | None, str]]:
    """(skip reason or None, code) for each fenced ``python`` block of a Markdown page, in page order."""
    return [(m["skip"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def runnable_pages() -> list[Path]:
    return [page for page in PAGES if any(skip is None for skip, _ in python_blocks(page))]


def test_block_parser_sees_skip_markers_and_code(tmp_path):
    page = "intro\n<!-- docs-test: skip, needs the Hub -->\n```python\na = 1\n```\n\n```python\nb = 2\n```\n"
    path = tmp_path / "page.md"
    path.write_text(page)
    assert python_blocks(path) == [("needs the Hub", "a = 1\n"), (None, "b = 2\n")]


def test_every_skipped_block_says_why_and_most_pages_run():
    blocks = {page.name: python_blocks(page) for page in PAGES}
    assert all(reason.strip() for page in blocks.values() for reason, _ in page if reason is not None)
    assert len(runnable_pages()) >= 8, [page.name for page in runnable_pages()]


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for index, (skip, code) in enumerate(python_blocks(page)):
        if skip is None:
            exec(compile(code, f"{page.name}, python block {index}", "exec"), namespace)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
