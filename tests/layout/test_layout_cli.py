"""The CLI's ``regional`` method offers every layout mode; its field choices are the package's."""

from __future__ import annotations

import json

import pytest

from attnctl.batch.fields import validate_field
from attnctl.cli import main
from attnctl.layout import MODES, SPECIAL_MASKS
from attnctl.methods import regional


def test_field_choices_are_the_layout_packages():
    assert regional.LAYOUT_MODES == MODES and regional.SPECIAL_MASKS == SPECIAL_MASKS


@pytest.mark.parametrize(("name", "value"), [("layout_mode", "paint"), ("mask_special", "eot"),
                                             ("region_weights", [1.0, 0.0]), ("base_ratio", 2.0)])
def test_bad_layout_fields_name_the_field(name, value):
    with pytest.raises(ValueError, match=f"{name}="):
        validate_field(name, value)


def test_regional_method_runs_each_mode_and_records_its_parameters(tmp_path, tiny_sd_path):
    common = {"prompt": "a red car and a blue bench", "phrases": ["red car", "blue bench"],
              "boxes": [[0, 0, 32, 64], [32, 0, 64, 64]], "size": "64x64"}
    rows = [{**common, "layout_mode": "bias", "layout_strength": 0.5, "mask_special": "boxes"},
            {**common, "layout_mode": "prompts", "base_ratio": 0.3, "region_weights": [1.0, 2.0],
             "region_prompts": ["a red car", "a blue bench"]}]
    jobs = tmp_path / "layout.jsonl"
    jobs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["generate", "--method", "regional", "--steps", "2", "--model", str(tiny_sd_path),
                 "--prompts", str(jobs), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[0]["parameters"]["layout_mode"] == "bias" and records[0]["parameters"]["mask_special"] == "boxes"
    assert records[1]["parameters"]["region_weights"] == [1.0, 2.0]
