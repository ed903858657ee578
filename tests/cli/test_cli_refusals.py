"""Runs that cannot do what they say are refused at start: structured guidance without spaCy's English pipeline."""

from __future__ import annotations

import json

from attnctl.cli import main


def test_structured_without_an_english_pipeline_refuses_unless_every_line_gives_phrases(
    tmp_path, tiny_sd_path, capsys, monkeypatch
):
    import attnctl.structured.phrases as phrases_module

    monkeypatch.setattr(phrases_module, "load_english_pipeline", lambda: None)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red car and a blue bench", "phrases": ["a red car"]}) + "\n"
                    + json.dumps({"prompt": "a cat on a mat"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["generate", "--method", "structured", "--steps", "1", "--model", str(tiny_sd_path), "--out", str(out)]
    assert main([*args, "--prompts", str(jobs)]) == 2
    err = capsys.readouterr().err
    assert "no English pipeline is installed" in err and "the first is line 2" in err and not out.exists()
    jobs.write_text(json.dumps({"prompt": "a red car and a blue bench", "phrases": ["a red car"]}) + "\n",
                    encoding="utf-8")
    assert main([*args, "--prompts", str(jobs)]) == 0  # every line gives its phrases
    assert main([*args, "--prompt", "a cat", "--struct-mode", "none", "--out", str(tmp_path / "stock")]) == 0
