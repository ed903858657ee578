"""Scale-out: ``accelerate launch`` with two CPU processes splits the items, each made exactly once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cli_helpers import manifest, output_files, pixels

from attnctl.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_two_processes_make_each_item_exactly_once(tmp_path, tiny_sd_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\na blue bench\na cat\n", encoding="utf-8")
    args = ["generate", "--method", "plain", "--steps", "2", "--model", str(tiny_sd_path), "--prompts", str(prompts),
            "--samples", "2"]
    # --multi_gpu makes accelerate start N processes (torchrun); with no GPU attnctl joins them as a gloo CPU
    # group. (`--cpu --num_processes 2` starts a single process in accelerate 1.x unless MPI is installed.)
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "attnctl",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "two"
    result = subprocess.run([*launcher, *args, "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("6 done, 0 skipped, 0 failed") == 1  # one summary, from the main process

    records = manifest(out)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 6 and sorted(paths) == output_files(out)
    assert sorted(r["process"] for r in records) == [0, 0, 0, 1, 1, 1]
    assert not list((out / ".attnctl").glob("*.jsonl"))  # journals merged away

    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # the same run on one process (one thread, as they)
    for record in records:  # pixels do not depend on which process made an item
        assert (pixels(out / record["path"]) == pixels(tmp_path / "one" / record["path"])).all()
