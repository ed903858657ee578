"""Atomic writes, PNG metadata, mp4 export and the journal/manifest merge."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from attnctl.batch.atomic import TEMP_MARK, atomic_path, remove_stale_temps, write_text_atomic
from attnctl.batch.manifest import MANIFEST, Journal, journal_path, merge_manifest, read_records
from attnctl.batch.media import read_png_text, save_mp4, save_png


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".") and TEMP_MARK in temp.name
        assert temp.suffix == ".txt"
        temp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_remove_stale_temps_only_touches_temp_files(tmp_path):
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / f".x{TEMP_MARK}1234.png"
    stale.write_bytes(b"")
    keep = [tmp_path / "a" / "x.png", tmp_path / ".hidden", tmp_path / f"visible{TEMP_MARK}.png"]
    for path in keep:
        path.write_bytes(b"")
    assert remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and all(p.exists() for p in keep)


def test_png_text_chunks_round_trip_unicode(tmp_path):
    image = PIL.Image.new("RGB", (8, 8), "red")
    text = {"prompt": "ein Bär 🐻", "seed": "7", "parameters": json.dumps({"steps": 2})}
    save_png(image, tmp_path / "x.png", text)
    assert read_png_text(tmp_path / "x.png") == text
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "x.png")), np.asarray(image))


def test_save_mp4_writes_a_playable_video(tmp_path):
    import imageio.v3 as iio

    frames = np.linspace(0, 1, 5 * 16 * 16 * 3, dtype=np.float32).reshape(5, 16, 16, 3)
    save_mp4(frames, tmp_path / "v.mp4", fps=8)
    video = iio.imread(tmp_path / "v.mp4")
    assert video.shape[0] == 5 and video.shape[1:3] == (16, 16)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def _record(path: str, finished_at: str, **extra):
    return {"path": path, "finished_at": finished_at, "entry": extra.pop("entry", 0), **extra}


def test_journals_merge_into_one_manifest_latest_wins_missing_dropped(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    write_text_atomic(tmp_path / MANIFEST, json.dumps(_record("a.png", "2026-01-01", v=1)) + "\n")
    Journal(tmp_path, 0).append(_record("a.png", "2026-01-02", v=2))
    Journal(tmp_path, 1).append(_record("c.png", "2026-01-02", entry=2))
    Journal(tmp_path, 1).append(_record("b.png", "2026-01-02", entry=1))
    Journal(tmp_path, 1).append(_record("gone.png", "2026-01-02", entry=3))
    with open(journal_path(tmp_path, 1), "a") as handle:
        handle.write('{"path": "torn.png", "finis')  # a crash mid-line
    assert read_records(tmp_path)["a.png"]["v"] == 2
    assert merge_manifest(tmp_path) == 3
    lines = [json.loads(line) for line in (tmp_path / MANIFEST).read_text().splitlines()]
    assert [r["path"] for r in lines] == ["a.png", "b.png", "c.png"]
    assert lines[0]["v"] == 2
    assert not list((tmp_path / ".attnctl").glob("*.jsonl"))
