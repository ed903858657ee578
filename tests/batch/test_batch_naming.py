"""Output names: safe components, uniqueness, containment, and the benchmark layouts' naming."""

from __future__ import annotations

import json
import re

import pytest

from attnctl.batch.layouts import check_layout, entry_files, item_path
from attnctl.batch.naming import MAX_NAME_BYTES, inside, make_unique, safe_component, slug

HOSTILE = [
    "../../etc/passwd",
    "/absolute/path",
    "..",
    ".hidden",
    "a/b\\c:d*e?f\"g<h>i|j",
    "tab\tnew\nline\x00nul",
    "CON",
    "x" * 1000,
    "ünïcødé 猫 🐱" * 40,
    "e\u0301",  # decomposed é: NFC-normalised
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_component_is_one_bounded_harmless_name(text):
    name = safe_component(text)
    assert name and "/" not in name and "\\" not in name
    assert not name.startswith(".") and name not in ("..", ".")
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not re.search(r"[\x00-\x1f<>:\"|?*]", name)
    assert name.upper() != "CON"


def test_safe_component_keeps_ordinary_prompts_and_cuts_on_character_boundaries():
    assert safe_component("a red car and a blue bench") == "a red car and a blue bench"
    assert safe_component("e\u0301") == "\u00e9"
    cut = safe_component("猫" * 100, max_bytes=10)
    assert cut == "猫" * 3  # 3 bytes each: 9 <= 10
    assert slug("A red  car!") == "A_red_car!"


def test_make_unique_is_case_insensitive_and_keeps_first_names():
    paths = ["a.png", "A.png", "b/c.png", "a.png", "a-2.png"]
    assert make_unique(paths) == ["a.png", "A-2.png", "b/c.png", "a-3.png", "a-2-2.png"]
    long = "x" * MAX_NAME_BYTES + ".png"
    assert all(len(p.encode()) <= MAX_NAME_BYTES + 4 for p in make_unique([long, long]))


def test_inside_refuses_escapes(tmp_path):
    assert inside(tmp_path, "a/b.png") == tmp_path.resolve() / "a/b.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(ValueError, match="escapes the output folder"):
            inside(tmp_path, bad)


def test_flat_layout_names():
    fields = {"prompt": "a red car"}
    assert item_path("flat", fields, 3, 1, 7, "image") == "00003_001_a_red_car.png"
    assert item_path("flat", {**fields, "name": "../hero"}, 3, 0, 7, "image") == "hero.png"
    assert item_path("flat", {**fields, "name": "hero", "samples": 2}, 3, 1, 7, "video") == "hero_001.mp4"


def test_t2i_compbench_names_round_trip_through_its_evaluator_parsing():
    fields = {"prompt": "a green_bench and a blue bowl/cup"}
    path = item_path("t2i-compbench", fields, 0, 0, 12, "image")
    assert path == "samples/a green bench and a blue bowl cup_000012.png"
    name = path.split("/")[1]
    assert name.split("_")[0] == "a green bench and a blue bowl cup"  # what its BLIP-VQA script reads
    assert int(name.split("_")[-1].split(".")[0]) == 12  # how it sorts


def test_geneval_layout_and_metadata():
    fields = {"prompt": "a photo of a bench", "tag": "single_object", "include": [{"class": "bench", "count": 1}],
              "metadata": {"extra": 1}}
    assert item_path("geneval", fields, 7, 3, 0, "image") == "00007/samples/00003.png"
    files = entry_files("geneval", fields, 7)
    assert list(files) == ["00007/metadata.jsonl"]
    assert json.loads(files["00007/metadata.jsonl"]) == {
        "extra": 1, "prompt": "a photo of a bench", "tag": "single_object", "include": [{"class": "bench", "count": 1}]
    }
    assert entry_files("flat", fields, 7) == {}


def test_vbench_layout_and_layout_checks():
    assert item_path("vbench", {"prompt": "a cat surfing"}, 0, 4, 0, "video") == "videos/a cat surfing-4.mp4"
    check_layout("flat", "video", "freeswim")
    with pytest.raises(ValueError, match="--layout vbench holds video"):
        check_layout("vbench", "image", "plain")
    with pytest.raises(ValueError, match="--layout geneval holds image"):
        check_layout("geneval", "video", "freeswim")
