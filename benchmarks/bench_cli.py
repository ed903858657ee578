"""Where the time of ``attnctl generate`` goes: generation, per-output bookkeeping, resume, manifest merge, start-up.

On the tiny offline model (64x64, ``--method plain``), so the pipeline is cheap and the batch machinery shows:

1. one run over N prompts through :func:`attnctl.batch.run_batch`: the whole loop, and the part inside the
   pipeline (the sum of the ``seconds`` the manifest records per output);
2. the bookkeeping of one output measured alone (PNG encode with metadata, atomic write, fsynced journal line),
   CPU and wall time, N times;
3. a rerun of the same N (every item is found finished and skipped), in process and as a fresh
   ``python -m attnctl generate`` (with interpreter, torch and diffusers start-up);
4. merging N journal lines into ``manifest.jsonl``;
5. ``import attnctl.cli`` (what ``attnctl --help`` pays) in a fresh interpreter.

    python benchmarks/bench_cli.py [--prompts 200] [--steps 2] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnctl.batch import METHODS, RunOptions, read_job_file, run_batch
from attnctl.batch.manifest import MANIFEST, Journal, merge_manifest, read_records
from attnctl.batch.media import save_png
from attnctl.batch.plan import plan_items
from attnctl.batch.records import item_record, png_text
from attnctl.cli.common import quiet_import_notices
from attnctl.models.tiny import save_tiny_sd_pipeline

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "pink", "brown")
THINGS = ("car", "bench", "cup", "sheep", "bird", "apple", "dog", "cat")


def write_prompts(path: Path, count: int) -> Path:
    """``count`` distinct prompts, one a line, in a ``.txt`` job file."""
    lines = [f"a {COLOURS[i % 8]} {THINGS[(i // 8) % 8]} number {i}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(function, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bookkeeping_alone(out: Path, options: RunOptions, jobs, image) -> tuple[float, float]:
    """Per-output (wall, CPU) seconds of writing one PNG with its metadata and journaling its record."""
    identity = {"method": options.method.name, "model": options.model, "dtype": options.dtype}
    items = plan_items(jobs, options.method, "flat", 0, identity)
    journal = Journal(out, 0)
    records = [
        item_record(item, "plain", options.model, "bench", {"steps": 2}, seconds=0.0) for item in items
    ]

    def write_all() -> None:
        for item, record in zip(items, records, strict=True):
            save_png(image, out / item.path, png_text(record))
            journal.append(record)

    wall, cpu, _ = timed(write_all)
    return wall / len(items), cpu / len(items)


def fresh_process_seconds(command: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """Median wall seconds of running ``command`` in a new process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="fresh-process timings: median of this many")
    args = parser.parse_args()
    quiet_import_notices()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(save_tiny_sd_pipeline(root / "tiny-sd"))
        prompts = write_prompts(root / "prompts.txt", args.prompts)
        jobs, errors = read_job_file(prompts, defaults={"steps": args.steps})
        assert not errors, errors
        out = root / "out"
        options = RunOptions(method=METHODS["plain"], model=model, out=out, source=prompts.name)
        quiet = {"report": lambda message: None}

        loop_wall, loop_cpu, tally = timed(run_batch, options, jobs, errors, **quiet)
        assert tally.done == args.prompts and tally.failed == 0, tally
        records = read_records(out)
        in_pipeline = sum(record["seconds"] for record in records.values())

        rerun_wall, _, rerun = timed(run_batch, options, jobs, errors, **quiet)
        assert rerun.skipped == args.prompts and rerun.done == 0, rerun
        env = {**os.environ, "TQDM_DISABLE": "1"}
        command = [
            sys.executable,
            "-m",
            "attnctl",
            "generate",
            "--method",
            "plain",
            "--model",
            model,
            "--prompts",
            str(prompts),
            "--steps",
            str(args.steps),
            "--out",
            str(out),
        ]
        rerun_cli = fresh_process_seconds(command, args.repeats, env)

        from PIL import Image

        image = Image.open(out / next(iter(records)))
        image.load()
        alone = root / "alone"
        book_wall, book_cpu = bookkeeping_alone(alone, options, jobs, image)
        merge_wall, _, merged = timed(merge_manifest, alone)
        assert merged == args.prompts and (alone / MANIFEST).is_file()

        import_seconds = fresh_process_seconds(
            [sys.executable, "-c", "import attnctl.cli"], args.repeats
        ) - fresh_process_seconds([sys.executable, "-c", "pass"], args.repeats)

    n = args.prompts
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"# {n} prompts, tiny model 64x64, --method plain, {args.steps} steps")
    print("| measurement | result |")
    print("|---|---|")
    print(
        f"| {n} prompts, one process: whole run_batch | {loop_wall:.1f} s wall ({loop_cpu:.1f} s CPU), "
        f"of which {in_pipeline:.1f} s inside the pipeline |"
    )
    print(
        f"| bookkeeping per output, alone (PNG with metadata, atomic write, journal line) | "
        f"{1e3 * book_cpu:.1f} ms CPU, {1e3 * book_wall:.1f} ms wall |"
    )
    print(f"| rerun of the same {n} (all skipped), in process | {rerun_wall:.2f} s |")
    print(f"| the same rerun as a fresh `python -m attnctl generate` (median) | {rerun_cli:.1f} s wall |")
    print(f"| merging {n} journal lines into {MANIFEST} | {merge_wall:.3f} s |")
    print(
        f"| `import attnctl.cli` in a fresh interpreter (beyond bare start-up) | {1e3 * import_seconds:.0f} ms |"
    )


if __name__ == "__main__":
    main()
