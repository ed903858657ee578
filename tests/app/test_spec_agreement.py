"""The CLI's job parser and the UI's checks read one spec: they accept and reject the same values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gradio as gr
import pytest
from attnctl.app.tabs import composition, freeswim, layout, structured
from attnctl.app.validation import SEED, param_value, spec_values
from hypothesis import given, settings
from hypothesis import strategies as st

from attnctl.batch.jobs import parse_lines
from attnctl.checks import MAX_SEED
from attnctl.methods.compose import SPEC as COMPOSE
from attnctl.methods.freeswim import SPEC as FREESWIM
from attnctl.methods.regional import SPEC as REGIONAL
from attnctl.methods.structured import SPEC as STRUCTURED

TABS = [(structured, STRUCTURED), (composition, COMPOSE), (freeswim, FREESWIM), (layout, REGIONAL)]
CONTROLS = [(tab, method, name) for tab, method in TABS for name in tab.CONTROLS]

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["values", "keys", "same", "cross", "", "3", 0.5, 2**63 - 1, 2**63, 10_000, 10_001]),
    st.text(max_size=5),
)


def cli_accepts(name: str, value) -> bool:
    """Whether a job line setting ``name`` to ``value`` parses (the real job-line reader)."""
    line = json.dumps({"prompt": "a red car", name: value})
    jobs, errors = parse_lines([line], "jobs.jsonl", True, Path("."))
    assert len(jobs) + len(errors) == 1
    return bool(jobs)


def ui_accepts(method, label: str, name: str, value) -> bool:
    try:
        spec_values(method, {name: label}, {name: value})
    except gr.Error:
        return False
    return True


@pytest.mark.parametrize(("tab", "method", "name"), CONTROLS, ids=[f"{t.__name__}-{n}" for t, _, n in CONTROLS])
@settings(max_examples=40, deadline=None)
@given(value=VALUES)
def test_every_tab_control_accepts_exactly_what_the_cli_job_parser_accepts(tab, method, name, value):
    assert name in method.all_params  # every control is a param of the tab's method
    assert cli_accepts(name, value) == ui_accepts(method, tab.CONTROLS[name], name, value), (name, value)


@settings(max_examples=60, deadline=None)
@given(value=VALUES)
def test_the_seed_box_accepts_exactly_the_cli_seeds(value):
    try:
        param_value(SEED, value, "Seed")
        ui = True
    except gr.Error:
        ui = False
    assert cli_accepts("seed", value) == ui


@pytest.mark.parametrize(("value", "accepted"), [(MAX_SEED, True), (MAX_SEED + 1, False), (0, True), (-1, False)])
def test_seed_limits_are_the_clis_in_both(value, accepted):
    assert cli_accepts("seed", value) is accepted
    assert ui_accepts(STRUCTURED, "Seed", "seed", value) is accepted


@pytest.mark.parametrize("value", [1, 200, 201, 10_000, 10_001, 0, math.nan])
def test_cache_interval_has_one_limit(value):
    """The drift of issue 15: 1..10000 in the CLI, 1..200 in the UI, >= 1 in the config; now one limit."""
    from attnctl.checks import check_call

    class Wan:  # check_call only needs the pixel multiple when sizes are passed
        pass

    try:
        check_call(Wan(), {"cache_interval": value})
        pipeline = True
    except ValueError:
        pipeline = False
    assert cli_accepts("cache_interval", value) == ui_accepts(FREESWIM, "Cache interval", "cache_interval", value)
    assert cli_accepts("cache_interval", value) == pipeline
