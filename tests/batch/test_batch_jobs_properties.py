"""Property tests (hypothesis) of the job-line parser: any line, any JSON, becomes a job or a line error."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from attnctl.batch.fields import FIELDS
from attnctl.batch.jobs import parse_lines
from attnctl.batch.methods import METHODS
from attnctl.batch.plan import plan_items

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
FIELD_NAMES = st.sampled_from(sorted(FIELDS)) | st.text(max_size=8)


def _parse(line, json_lines):
    jobs, errors = parse_lines([line], "jobs.jsonl", json_lines, Path("."))
    assert len(jobs) + len(errors) <= 1
    for error in errors:
        assert str(error).startswith("jobs.jsonl:1: ") and error.message
    return jobs


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(FIELD_NAMES, JSON, max_size=4), prompt=st.text(max_size=20))
def test_any_json_object_is_a_job_or_a_line_error_and_jobs_plan(fields, prompt):
    line = json.dumps({"prompt": prompt, **fields}, allow_nan=True)
    for job in _parse(line, json_lines=True):
        if job.fields.get("samples", 1) <= 10:  # a valid job plans under every method: paths, seeds, fingerprints
            for method in METHODS.values():
                plan_items([job], method, "flat", 0, {"method": method.name})


@settings(max_examples=300, deadline=None)
@given(line=st.text(max_size=60) | st.binary(max_size=60))
def test_any_bytes_or_text_line_is_a_job_or_a_line_error(line):
    for json_lines in (True, False):
        for job in _parse(line, json_lines):
            plan_items([job], METHODS["plain"], "t2i-compbench", 0, {})
