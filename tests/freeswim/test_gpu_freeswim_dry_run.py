"""The GPU benchmark script's CPU dry run: a toy Wan at a 3 x 8 x 12 grid through every measured part."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about a minute on the shared 2-core CPU

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_freeswim.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("gpu_freeswim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("gpu") / "results.json"
    return module.main(["--dry-run", "--repeats", "1", "--steps", "2", "--out", str(out)])


def test_kernel_and_forward_rows_compare_backends_exactly(results):
    kernel = [row for row in results["rows"] if row["part"] == "kernel"]
    assert [row["backend"] for row in kernel] == ["reference", "tiled"]
    window_keys = 3 * 3 * 5  # all 3 frames, the 3 x 5 window of a 3 x 5 native grid
    assert all(row["flop_bound"] == pytest.approx(3 * 8 * 12 / window_keys) for row in kernel)
    assert all(row["max_abs_diff"] < 1e-5 and row["ms"] > 0 for row in kernel)
    forward = [row for row in results["rows"] if row["part"] == "forward"]
    assert [row["backend"] for row in forward] == ["reference", "tiled"]
    assert all(row["max_abs_diff"] < 1e-4 for row in forward)


def test_step_rows_follow_the_cache_interval(results):
    steps = {row["cache_interval"]: row for row in results["rows"] if row["part"] == "step"}
    assert sorted(steps) == [1, 2, 5]
    assert {k: row["dual_steps"] for k, row in steps.items()} == {k: math.ceil(2 / k) for k in (1, 2, 5)}
    assert steps[1]["cache_gib"] == 0 and steps[2]["cache_gib"] > 0 and steps[5]["cache_gib"] > 0


def test_results_file_holds_every_row_and_a_budget_skips_parts(results, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_freeswim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "budget.json"
    short = module.main(["--dry-run", "--repeats", "1", "--steps", "1", "--budget-s", "0", "--out", str(out)])
    assert short["rows"] == [] and short["skipped"] == ["3x8x12 kernel", "3x8x12 forward", "3x8x12 step"]
    assert json.loads(out.read_text())["skipped"] == short["skipped"]
    assert results["skipped"] == [] and results["seconds"] > 0
