"""Batch state under faults: damaged journals and manifests, a busy or unwritable --out, a full disk, kills."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest

from attnctl.batch import runner
from attnctl.batch.atomic import TEMP_MARK
from attnctl.batch.guard import OutputBusy, OutputLock
from attnctl.batch.jobs import parse_lines
from attnctl.batch.manifest import MANIFEST, Journal, journal_path, merge_manifest, read_records
from attnctl.batch.methods import METHODS
from attnctl.batch.runner import RunOptions, run_batch

GOOD = {"path": "a.png", "entry": 0, "sample": 0, "fingerprint": "f", "finished_at": "2026-01-01T00:00:00"}


def _jobs(count: int, samples: int = 1):
    lines = [json.dumps({"prompt": f"prompt {i}", "samples": samples, "steps": 1}) for i in range(count)]
    return parse_lines(lines, "jobs.jsonl", True, Path("."))


def test_torn_and_malformed_lines_are_skipped_and_never_glue_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.png").write_bytes(b"png")
    damaged = [
        "{not json", json.dumps({"path": 5}), json.dumps({**GOOD, "path": "../escape.png"}),
        json.dumps({**GOOD, "path": "/abs.png"}), json.dumps({**GOOD, "finished_at": 3}),
        json.dumps({**GOOD, "entry": "zero"}), json.dumps([GOOD]), "[" * 100_000,
    ]
    manifest_text = "\n".join([json.dumps(GOOD), *damaged]) + "\n"
    (tmp_path / MANIFEST).write_bytes(manifest_text.encode() + b"\xff\xfe not utf-8\n")
    journal = journal_path(tmp_path, 0)
    journal.parent.mkdir()
    journal.write_text(json.dumps({**GOOD, "path": "b.png"})[:25])  # torn by a crash: no newline
    Journal(tmp_path, 0).append({**GOOD, "path": "b.png", "finished_at": "2026-01-02T00:00:00"})
    assert sorted(read_records(tmp_path)) == ["a.png", "b.png"]
    assert merge_manifest(tmp_path) == 2
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a.png", "b.png"]


def test_a_deeply_nested_job_line_is_one_line_error():
    lines = ['{"prompt": "a cat"}', '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}",
             json.dumps({"prompt": "a", "metadata": {"a": json.loads("[" * 40 + "]" * 40)}})]
    jobs, errors = parse_lines(lines, "jobs.jsonl", True, Path("."))
    assert [job.line for job in jobs] == [1]
    assert "nested too deeply" in errors[0].message and "at most 32 levels" in errors[1].message


def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from attnctl.batch.guard import "
         "OutputLock; lock = OutputLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy, match=rf"in use by another attnctl generate run \(pid {holder.pid} on "):
            OutputLock(tmp_path).acquire()
        jobs, errors = _jobs(1)
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            run_batch(RunOptions(method=METHODS["plain"], model="unused", out=tmp_path), jobs, errors)
    finally:
        holder.kill()
        holder.wait()
    OutputLock(tmp_path).acquire().release()  # the kernel dropped the dead holder's lock


def test_an_unwritable_out_fails_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(runner._Worker, "_load", lambda self: pytest.fail("the model must not load"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    jobs, errors = _jobs(1)
    with pytest.raises(ValueError, match=rf"--out {blocker / 'out'} is not writable"):
        run_batch(RunOptions(method=METHODS["plain"], model="unused", out=blocker / "out"), jobs, errors)


def test_a_full_disk_stops_the_run_keeping_what_is_done_and_a_rerun_resumes(tmp_path, tiny_sd_path, monkeypatch):
    out, jobs_errors = tmp_path / "out", _jobs(4)
    options = RunOptions(method=METHODS["plain"], model=str(tiny_sd_path), out=out, source="jobs.jsonl")
    real_save, calls = runner.save_png, []

    def fills_up(image, target, text):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_save(image, target, text)

    monkeypatch.setattr(runner, "save_png", fills_up)
    messages = []
    tally = run_batch(options, *jobs_errors, report=messages.append)
    assert (tally.done, tally.failed, len(calls)) == (1, 1, 2)  # stopped at the full disk: items 3 and 4 not tried
    assert "no space left on device" in tally.failures[0] and "rerun the same command to resume" in tally.failures[0]
    assert len((out / MANIFEST).read_text().splitlines()) == 1
    monkeypatch.setattr(runner, "save_png", real_save)
    again = run_batch(options, *jobs_errors, report=messages.append)
    assert (again.done, again.skipped, again.failed) == (3, 1, 0)


def _attnctl(out: Path, prompts: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "attnctl", "generate", "--method", "plain", "--steps", "1", "--model", str(model),
            "--prompts", str(prompts), "--samples", "2", "--out", str(out), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def _check_exactly_once(out: Path, count: int) -> None:
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    paths = [record["path"] for record in records]
    assert len(paths) == len(set(paths)) == count
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert files == sorted(paths)
    for path in files:
        with PIL.Image.open(out / path) as image:
            image.verify()  # a whole, valid PNG
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name]


def _kill_and_resume(tmp_path: Path, model: Path, kills: int, seed: int) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(4)), encoding="utf-8")
    out, rng = tmp_path / "out", random.Random(seed)
    for _ in range(kills):
        process = subprocess.Popen(_attnctl(out, prompts, model), env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        journal = journal_path(out, 0)
        deadline = time.monotonic() + 120  # wait until it works (model loaded, items journaled), then kill
        while time.monotonic() < deadline and process.poll() is None and not journal.exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = subprocess.run(_attnctl(out, prompts, model), env=ENV, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    _check_exactly_once(out, 8)


def test_killed_at_a_random_point_every_item_exists_exactly_once(tmp_path, tiny_sd_path):
    _kill_and_resume(tmp_path, tiny_sd_path, kills=1, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_killed_many_times_every_item_exists_exactly_once(tmp_path, tiny_sd_path, seed):
    _kill_and_resume(tmp_path, tiny_sd_path, kills=4, seed=seed)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent through prctl")
def test_killing_the_accelerate_launcher_leaves_no_workers_and_a_rerun_completes(tmp_path, tiny_sd_path):
    import socket

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(4)), encoding="utf-8")
    out = tmp_path / "out"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), "-m", "attnctl"]
    process = subprocess.Popen([*launcher, *_attnctl(out, prompts, tiny_sd_path)[3:]], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not list(out.glob(".attnctl/manifest.part-*")):
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _processes_mentioning(str(out)):
        time.sleep(0.2)
    assert _processes_mentioning(str(out)) == []  # the workers died with their launcher
    final = subprocess.run(_attnctl(out, prompts, tiny_sd_path), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    _check_exactly_once(out, 8)
