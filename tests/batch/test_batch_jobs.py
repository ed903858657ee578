"""Job files: fields, validation messages, line numbers, entry indices that never shift."""

from __future__ import annotations

import json

import pytest

from attnctl.batch.fields import FIELDS, validate_field
from attnctl.batch.jobs import parse_lines, read_job_file


def _jsonl(tmp_path, *lines: str, name: str = "jobs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_txt_lines_skip_blanks_and_comments_and_keep_first_tab_column(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red car\n\n# a comment\n  a blue bench\t1\textra\n\ufeffa cat\n", encoding="utf-8")
    jobs, errors = read_job_file(path)
    assert errors == []
    assert [(j.entry, j.line, j.prompt) for j in jobs] == [(0, 1, "a red car"), (1, 4, "a blue bench"), (2, 5, "a cat")]


def test_jsonl_errors_carry_line_numbers_and_do_not_stop_the_file(tmp_path):
    path = _jsonl(
        tmp_path,
        '{"prompt": "a red car", "steps": 3}',
        "not json",
        '{"prompt": "a cat", "stepz": 3}',
        '["a list"]',
        "",
        '{"negative_prompt": "blur"}',
        '{"prompt": "a dog", "size": 63}',
        '{"prompt": "a dog", "seed": -1}',
        '{"prompt": "a dog", "samples": true}',
        '{"prompt": "last one", "size": "96x64"}',
    )
    jobs, errors = read_job_file(path)
    assert [(j.line, j.entry) for j in jobs] == [(1, 0), (10, 8)]
    assert jobs[1].fields["size"] == (96, 64)
    by_line = {e.line: str(e) for e in errors}
    assert sorted(by_line) == [2, 3, 4, 6, 7, 8, 9]
    assert by_line[2].startswith("jobs.jsonl:2: not valid JSON")
    assert "did you mean 'steps'" in by_line[3]
    assert "expected a JSON object" in by_line[4]
    assert 'missing "prompt"' in by_line[6]
    assert "size=63" in by_line[7] and "multiples of 8" in by_line[7]
    assert "seed=-1" in by_line[8]
    assert "samples=True" in by_line[9]
    # malformed lines still take an entry index: fixing them never renumbers the others
    assert [e.entry for e in errors] == [1, 2, 3, 4, 5, 6, 7]


def test_invalid_utf8_is_a_line_error(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"a red car\n\xff\xfe broken\na cat\n")
    jobs, errors = read_job_file(path)
    assert [j.prompt for j in jobs] == ["a red car", "a cat"]
    assert errors[0].line == 2 and "UTF-8" in errors[0].message


def test_defaults_fill_fields_and_lines_override_them(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "a", "steps": 9}', '{"prompt": "b"}')
    jobs, _ = read_job_file(path, defaults={"steps": 2, "guidance": 3.0})
    assert [dict(j.fields) for j in jobs] == [
        {"steps": 9, "guidance": 3.0, "prompt": "a"},
        {"steps": 2, "guidance": 3.0, "prompt": "b"},
    ]


def test_input_files_resolve_against_the_job_file_folder_and_must_exist(tmp_path):
    (tmp_path / "bg.png").write_bytes(b"png")
    path = _jsonl(tmp_path, '{"prompt": "a", "background": "bg.png"}', '{"prompt": "b", "background": "gone.png"}')
    jobs, errors = read_job_file(path)
    assert jobs[0].fields["background"] == str((tmp_path / "bg.png").resolve())
    assert errors[0].line == 2 and "background: file not found" in errors[0].message


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a\n")
    with pytest.raises(ValueError, match=r"\.txt .* or \.jsonl"):
        read_job_file(path)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("size", 64, (64, 64)),
        ("size", "128X64", (128, 64)),
        ("struct_mode", None, None),
        ("guidance", 0, 0.0),
        ("boxes", [[0, 0, 8, 8]], [(0.0, 0.0, 8.0, 8.0)]),
        ("strength", 1, 1.0),
    ],
)
def test_valid_field_values_are_normalised(name, value, expected):
    assert validate_field(name, value) == expected


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("steps", 0, "steps=0"),
        ("steps", 2.5, "steps=2.5"),
        ("guidance", float("nan"), "guidance=nan"),
        ("struct_mode", "both", "struct_mode='both'"),
        ("phrases", "a red car", "a list of strings, e.g. [.a red car.], not one string"),
        ("boxes", [[5, 0, 1, 8]], "boxes[0]"),
        ("strength", 0, "strength=0"),
        ("prompt", "   ", "non-empty string"),
    ],
)
def test_invalid_field_values_name_the_field_and_the_fix(name, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate_field(name, value)


def test_native_size_is_a_multiple_of_16():
    assert validate_field("native_size", "480x832") == (480, 832)
    with pytest.raises(ValueError, match="multiples of 16"):
        validate_field("native_size", 72)


def test_every_field_has_help_and_geneval_lines_parse_as_jobs(tmp_path):
    assert all(f.help for f in FIELDS.values())
    geneval = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    jobs, errors = parse_lines([json.dumps(geneval)], "meta.jsonl", True, tmp_path)
    assert errors == [] and jobs[0].fields["tag"] == "color_attr"
