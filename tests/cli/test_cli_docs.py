"""docs/cli.md's job-field table is the method specs' own (attnctl.spec.markdown_table)."""

from __future__ import annotations

from pathlib import Path

from attnctl.batch.methods import METHODS
from attnctl.spec import markdown_table

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_job_field_table_in_the_docs_is_generated_from_the_specs():
    text = CLI_DOC.read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- job-fields:")) + len("-->\n")
    assert text[start:text.index("\n<!-- /job-fields -->")] == markdown_table(METHODS)


def test_generate_help_lists_every_method_with_its_fields(capsys):
    from attnctl.cli import main

    assert main(["generate", "--help"]) == 0
    shown = capsys.readouterr().out
    for method in METHODS.values():
        assert f"{method.name:<11} {method.help}"[:60] in shown
