"""``attnctl generate`` end to end on the tiny offline model: outputs, metadata, bad input, resume, layouts."""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import manifest, output_files, pixels, run_attnctl

from attnctl import __version__
from attnctl.batch.atomic import TEMP_MARK
from attnctl.batch.media import read_png_text
from attnctl.batch.runner import CRASH_AFTER_ENV, CRASH_EXIT_CODE
from attnctl.cli import main

FAST = ("--method", "plain", "--steps", "2")


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generate_writes_pngs_with_metadata_skips_bad_lines_and_keeps_hostile_names_inside(tmp_path, tiny_sd_path):
    work = tmp_path / "work"
    work.mkdir()
    jobs = _write_jsonl(work / "jobs.jsonl", [
        {"prompt": "a red car", "seed": 5, "negative_prompt": "blur", "metadata": {"set": "demo"}},
        "{broken json",
        {"prompt": "a blue bench", "stepz": 3},
        {"prompt": "a cat", "background": "missing.png"},
        {"prompt": "../../escape attempt/../x", "name": "../../../evil"},
        {"prompt": "x", "name": "/etc/passwd"},
        {"prompt": "ünïcødé 猫 " * 60},
        {"prompt": "dup", "name": "Same"},
        {"prompt": "dup", "name": "same"},
    ])
    out = work / "out"
    result = run_attnctl("generate", *FAST, "--model", str(tiny_sd_path), "--prompts", str(jobs), "--out", str(out))

    assert result.returncode == 1, result.stderr  # some lines failed
    for line, reason in ((2, "not valid JSON"), (3, "unknown field 'stepz'; did you mean 'steps'"), (4, "background: file not found")):
        assert f"jobs.jsonl:{line}: {reason}" in result.stderr
    assert "6 done, 0 skipped, 3 failed" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["method"]) == (6, 3, "plain")
    assert len(summary["failures"]) == 3

    records = manifest(out)
    files = output_files(out)
    assert sorted(r["path"] for r in records) == files and len(files) == 6
    assert {"evil.png", "etc passwd.png", "Same.png", "same-2.png"} <= set(files)
    assert sorted(p.name for p in work.iterdir()) == ["jobs.jsonl", "out"]  # nothing escaped --out
    assert all(len(os.path.basename(f).encode()) <= 255 for f in files)

    first = next(r for r in records if r["prompt"] == "a red car")
    assert first["seed"] == 5 and first["line"] == 1 and first["metadata"] == {"set": "demo"}
    assert first["parameters"] == {"guidance": 7.5, "size": "64x64", "steps": 2}
    text = read_png_text(out / first["path"])
    assert text["prompt"] == "a red car" and text["negative_prompt"] == "blur" and text["seed"] == "5"
    assert text["method"] == "plain" and text["attnctl_version"] == __version__
    assert json.loads(text["parameters"]) == first["parameters"]
    assert json.loads(text["attnctl"])["fingerprint"] == first["fingerprint"]


def test_resume_after_a_crash_makes_each_item_exactly_once(tmp_path, tiny_sd_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\na blue bench\na cat\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["generate", *FAST, "--model", str(tiny_sd_path), "--prompts", str(prompts), "--out", str(out),
            "--samples", "2"]

    crashed = run_attnctl(*args, env={CRASH_AFTER_ENV: "2"})  # hard exit after the 2nd item: no merge
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert not (out / "manifest.jsonl").exists() and len(output_files(out)) == 2
    early = {name: pixels(out / name) for name in output_files(out)}
    (out / f".00000_000_a_red_car{TEMP_MARK}dead.png").write_bytes(b"partial")  # a write the kill cut off

    assert main(args) == 0  # the same command again resumes
    assert "4 done, 2 skipped, 0 failed" in capsys.readouterr().out
    records = manifest(out)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 6 and sorted(paths) == output_files(out)
    assert not any(TEMP_MARK in p.name for p in out.rglob("*"))
    assert all((pixels(out / name) == before).all() for name, before in early.items())

    with open(prompts, "a", encoding="utf-8") as handle:
        handle.write("a green apple\n")
    assert main(args) == 0
    assert "2 done, 6 skipped" in capsys.readouterr().out
    assert len(manifest(out)) == 8


def test_recorded_seed_reproduces_an_image_exactly_and_overwrite_regenerates(tmp_path, tiny_sd_path, capsys):
    out = tmp_path / "run"
    base = ("generate", *FAST, "--model", str(tiny_sd_path), "--out", str(out))
    assert main([*base, "--prompt", "a red car", "--samples", "2", "--seed", "3"]) == 0
    record = manifest(out)[1]
    assert record["sample"] == 1 and record["seed"] != manifest(out)[0]["seed"]

    again = _write_jsonl(tmp_path / "again.jsonl", [{"prompt": "a red car", "seed": record["seed"]}])
    assert main(["generate", *FAST, "--model", str(tiny_sd_path), "--prompts", str(again), "--out",
                 str(tmp_path / "again")]) == 0
    assert (pixels(tmp_path / "again" / manifest(tmp_path / "again")[0]["path"]) == pixels(out / record["path"])).all()

    capsys.readouterr()
    assert main([*base, "--prompt", "a red car", "--samples", "2", "--seed", "3", "--overwrite"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().out
    assert main([*base, "--prompt", "a red car", "--samples", "2", "--seed", "3", "--steps", "3"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().out  # a changed parameter is not "finished"


def test_benchmark_layouts(tmp_path, tiny_sd_path):
    geneval = _write_jsonl(tmp_path / "evaluation_metadata.jsonl", [
        {"tag": "single_object", "include": [{"class": "car", "count": 1}], "prompt": "a photo of a car"},
        {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"},
    ])
    out = tmp_path / "geneval"
    assert main(["generate", *FAST, "--model", str(tiny_sd_path), "--prompts", str(geneval), "--out", str(out),
                 "--layout", "geneval", "--samples", "2"]) == 0
    assert output_files(out) == [
        "00000/metadata.jsonl", "00000/samples/00000.png", "00000/samples/00001.png",
        "00001/metadata.jsonl", "00001/samples/00000.png", "00001/samples/00001.png",
    ]
    assert json.loads((out / "00001/metadata.jsonl").read_text())["include"][0]["color"] == "red"

    compbench = tmp_path / "color_val.txt"
    compbench.write_text("a green bench and a blue bowl\na red_car\n", encoding="utf-8")
    out = tmp_path / "compbench"
    assert main(["generate", *FAST, "--model", str(tiny_sd_path), "--prompts", str(compbench), "--out", str(out),
                 "--layout", "t2i-compbench", "--samples", "2"]) == 0
    assert output_files(out) == [
        "samples/a green bench and a blue bowl_000000.png", "samples/a green bench and a blue bowl_000001.png",
        "samples/a red car_000002.png", "samples/a red car_000003.png",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--prompts", "nope.txt"), "--prompts nope.txt: no such file"),
        (("--prompt", "a", "--set", "stepz=2"), "did you mean 'steps'"),
        (("--prompt", "a", "--set", "steps"), "expected FIELD=VALUE"),
        (("--prompt", "a", "--size", "63"), "size=63 is invalid"),
        (("--prompt", "a", "--seed", "-1"), "--seed: seed=-1"),
        (("--prompt", "a", "--layout", "vbench"), "--layout vbench holds video outputs but --method plain"),
        (("--prompt", "a", "--cpu-offload", "--device", "cpu"), "--cpu-offload"),
        (("--prompt", "a", "--device", "gpu7"), "--device 'gpu7'"),
        (("--prompt", "a", "--model", "./no/such/folder"), "no such folder"),
        (("--prompt", "a", "--model", "."), "no model_index.json there"),
        (("--prompt", "a", "--out", "/proc/attnctl-cannot-write-here"), "/proc/attnctl-cannot-write-here"),
    ],
)
def test_usage_errors_exit_2_with_an_actionable_message(tmp_path, tiny_sd_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = ["generate", *FAST, "--model", str(tiny_sd_path), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_prompt_file_without_prompts_is_a_usage_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    assert main(["generate", *FAST, "--prompts", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty.txt: no prompts" in capsys.readouterr().err


def test_unavailable_method_fails_each_item_with_a_clear_reason(tmp_path, tiny_sd_path, capsys, monkeypatch):
    from attnctl.batch import methods
    from attnctl.spec import MethodSpec

    def not_written_yet() -> type:
        from attnctl.pipelines import not_written_yet  # noqa: F401 (the import is what fails)

    ghost = MethodSpec("regional", "Ghost", not_written_yet, "image", "")
    monkeypatch.setitem(methods.METHODS, "regional", ghost)
    code = main(["generate", "--method", "regional", "--model", str(tiny_sd_path), "--prompt", "a", "--prompt", "b",
                 "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1 and "0 done, 0 skipped, 2 failed" in captured.out
    assert captured.err.count("--method regional is not available") >= 2
    assert "--prompt:1:" in captured.err and "--prompt:2:" in captured.err


def test_structured_method_records_its_phrases(tmp_path, tiny_sd_path):
    out = tmp_path / "out"
    assert main([
        "generate", "--method", "structured", "--steps", "2", "--model", str(tiny_sd_path), "--out", str(out),
        "--prompt", "a red car and a white sheep", "--struct-mode", "keys",
    ]) == 0
    (record,) = manifest(out)
    assert record["parameters"]["struct_mode"] == "keys"
    assert record["phrases"] == [{"text": "a red car", "tokens": [0, 3]}, {"text": "a white sheep", "tokens": [4, 7]}]
    assert json.loads(read_png_text(out / record["path"])["attnctl"])["phrases"] == record["phrases"]


def test_compose_method_loads_images_relative_to_the_job_file(tmp_path, tiny_sd_path):
    import PIL.Image
    import PIL.ImageDraw

    PIL.Image.new("RGB", (64, 64), (30, 120, 200)).save(tmp_path / "bg.png")
    subject = PIL.Image.new("RGB", (32, 32))
    PIL.ImageDraw.Draw(subject).ellipse((4, 4, 28, 28), fill=(220, 30, 30))
    subject.save(tmp_path / "subject.png")
    mask = PIL.Image.new("L", (32, 32))
    PIL.ImageDraw.Draw(mask).ellipse((4, 4, 28, 28), fill=255)
    mask.save(tmp_path / "mask.png")
    line = {"prompt": "a red circle", "background": "bg.png", "subject": "subject.png", "subject_mask": "mask.png",
            "box": [16, 16, 48, 48], "subject_words": ["circle"], "inversion_token_id": None}
    jobs = _write_jsonl(tmp_path / "compose.jsonl", [line, {**line, "subject": "nope.png"}])
    out = tmp_path / "out"
    assert main(["generate", "--method", "compose", "--steps", "2", "--model", str(tiny_sd_path), "--prompts",
                 str(jobs), "--out", str(out)]) == 1  # line 2 names a missing image
    (record,) = manifest(out)
    assert record["parameters"]["background"] == str((tmp_path / "bg.png").resolve())
    assert record["parameters"]["box"] == [16.0, 16.0, 48.0, 48.0]
    assert pixels(out / record["path"]).shape == (64, 64, 3)


def test_a_model_that_does_not_load_fails_every_item_with_the_reason(tmp_path, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')  # no components
    code = main(["generate", *FAST, "--model", str(broken), "--prompt", "a", "--prompt", "b",
                 "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1 and "0 done, 0 skipped, 2 failed" in captured.out
    assert captured.err.count("could not load --model") == 4  # as each fails, then in the final list


def test_freeswim_writes_mp4s_in_the_vbench_layout(tmp_path, tiny_wan_path, capsys):
    import imageio.v3 as iio

    out = tmp_path / "vbench"
    argv = ["generate", "--method", "freeswim", "--model", str(tiny_wan_path), "--prompt", "a cat walking",
            "--steps", "2", "--size", "64", "--set", "native_size=32", "--set", "frames=5", "--set", "fps=8",
            "--layout", "vbench", "--samples", "2", "--out", str(out)]
    assert main(argv) == 0
    assert output_files(out) == ["videos/a cat walking-0.mp4", "videos/a cat walking-1.mp4"]
    records = manifest(out)
    assert records[0]["parameters"]["native_size"] == "32x32" and records[0]["parameters"]["fps"] == 8
    video = iio.imread(out / records[0]["path"])
    assert video.shape == (5, 64, 64, 3)

    assert main(["generate", "--method", "freeswim", "--prompt", "a cat", "--out", str(out)]) == 2
    assert "needs a Wan text-to-video checkpoint" in capsys.readouterr().err


def test_regional_method_turns_pixel_boxes_into_regions(tmp_path, tiny_sd_path):
    jobs = _write_jsonl(tmp_path / "layout.jsonl", [
        {"prompt": "a red car and a blue bench", "phrases": ["a red car", "a blue bench"],
         "boxes": [[0, 0, 32, 64], [32, 0, 64, 64]], "size": "64x64"},
        {"prompt": "a red car", "phrases": ["a red car"], "boxes": [[0, 0, 96, 64]]},
    ])
    out = tmp_path / "out"
    result = run_attnctl("generate", "--method", "regional", "--steps", "2", "--model", str(tiny_sd_path),
                         "--prompts", str(jobs), "--out", str(out))
    assert result.returncode == 1
    assert "1 done, 0 skipped, 1 failed" in result.stdout
    assert "layout.jsonl:2: " in result.stderr and "reaches outside the 64x64 image" in result.stderr
