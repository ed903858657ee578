"""``attnctl parse`` and ``attnctl ui`` (the app itself is tested with the UI)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request

import pytest
from cli_helpers import run_attnctl

from attnctl.cli import main


def test_parse_prints_phrases_with_token_spans(tiny_sd_path):
    result = run_attnctl("parse", "A red car and a white sheep.", "--model", str(tiny_sd_path))
    assert result.returncode == 0, result.stderr
    assert "prompt: a red car and a white sheep" in result.stdout
    assert "tokens: 0:a 1:red 2:car 3:and 4:a 5:white 6:sheep" in result.stdout
    assert "[ 0,  3)  a red car      a | red | car" in result.stdout
    assert "[ 4,  7)  a white sheep  a | white | sheep" in result.stdout


def test_parse_json_and_explicit_phrases(tiny_sd_path, capsys):
    assert main(["parse", "a red car next to a blue bench", "--model", str(tiny_sd_path), "--json",
                 "--phrases", "blue bench"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["phrases"] == [{"text": "blue bench", "tokens": [6, 8], "pieces": ["blue", "bench"]}]


def test_parse_drops_a_phrase_covering_the_whole_prompt_like_the_pipeline(tiny_sd_path, capsys):
    assert main(["parse", "a red car", "--model", str(tiny_sd_path), "--phrases", "a red car", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phrases"] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["parse", "a red car", "--phrases", "a green apple"], "does not occur in the prompt"),
        (["parse", "   "], "is empty"),
    ],
)
def test_parse_bad_input_exits_2(tiny_sd_path, capsys, argv, message):
    assert main([*argv, "--model", str(tiny_sd_path)]) == 2
    assert message in capsys.readouterr().err


def test_ui_subcommand_validates_its_options_in_a_subprocess():
    result = run_attnctl("ui", "--port", "0")
    assert result.returncode == 2 and "--port 0: expected 1 to 65535" in result.stderr


def test_ui_calls_the_apps_launch_or_explains_its_absence(tiny_sd_path, monkeypatch, capsys):
    from attnctl.app import limits

    calls = []
    app = types.ModuleType("attnctl.app")  # stands in for the Gradio app, which has its own tests
    app.launch = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "attnctl.app", app)
    monkeypatch.setitem(sys.modules, "attnctl.app.limits", limits)
    assert main(["ui", "--model", str(tiny_sd_path), "--port", "7999", "--share", "--max-steps", "20"]) == 0
    assert calls == [{"model": str(tiny_sd_path), "host": "127.0.0.1", "port": 7999, "share": True,
                      "limits": limits.Limits(max_steps=20)}]
    assert main(["ui"]) == 0
    assert calls[-1] == {"model": None, "host": "127.0.0.1", "port": None, "share": False, "limits": limits.Limits()}
    assert main(["ui", "--max-pixels", "0"]) == 2
    assert "max_pixels=0 is invalid: expected a whole number >= 1" in capsys.readouterr().err

    del app.launch
    assert main(["ui", "--model", str(tiny_sd_path)]) == 2
    assert "attnctl.app has no launch()" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_app_on_localhost(tiny_sd_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "attnctl", "ui", "--model", str(tiny_sd_path), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.status == 200 and b"gradio" in response.read().lower()
                    break
            except OSError:
                assert time.monotonic() < deadline, "attnctl ui did not start serving within 120 s"
                time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
