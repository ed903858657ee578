"""``attnctl generate``: batch images and videos from a prompt file, resumable, scalable with accelerate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from attnctl.batch.fields import validate_field
from attnctl.batch.jobs import Job, JobError, parse_lines, read_job_file, validate_fields
from attnctl.batch.layouts import LAYOUTS
from attnctl.batch.methods import METHODS

from .common import EXIT_FAILED, EXIT_OK, model_argument, model_help

EPILOG = """\
examples:
  attnctl generate --prompts prompts.txt --out runs/a
  attnctl generate --method plain --prompts cc500.jsonl --samples 4 --steps 30 --out runs/b
  attnctl generate --layout t2i-compbench --samples 10 --prompts color_val.txt --out runs/compbench
  accelerate launch --multi_gpu --num_processes 2 -m attnctl generate --prompts p.txt --out runs/c

methods:
""" + "\n".join(
    f"  {m.name:<11} {m.help}" + (f"\n{'':14}fields: {', '.join(p.name for p in m.params)}" if m.params else "")
    for m in METHODS.values()
) + """

A rerun of the same command skips finished outputs (resume); --overwrite regenerates them.
Exit codes: 0 all done, 1 some items failed, 2 usage error.
"""


def add_parser(commands: Any) -> None:
    """Register ``generate`` and its options."""
    p = commands.add_parser(
        "generate", help="generate images or videos for every prompt of a file",
        description="Generate images (PNG with metadata) or videos (mp4) for a prompt file, one CPU-seeded "
        "generator per output, atomic writes, a JSONL manifest, resume, benchmark layouts.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, metavar="FILE",
                        help=".txt (one prompt a line) or .jsonl (one object a line with per-line fields)")
    source.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    p.add_argument("--method", choices=list(METHODS), default="structured",
                   help="the pipeline (default: structured); methods and their fields are listed below")
    p.add_argument("--model", help=model_help())
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")
    p.add_argument("--layout", choices=LAYOUTS, default="flat", help="folder layout and file naming")
    p.add_argument("--seed", type=int, default=0, help="run seed; per-item seeds derive from it (default 0)")
    p.add_argument("--samples", type=int, help="outputs per prompt (default 1; a line's \"samples\" wins)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    p.add_argument("--size", help='output size: 512 or WIDTHxHEIGHT such as 768x512 (default: the model\'s)')
    p.add_argument("--negative-prompt", help="negative prompt for every line that sets none")
    p.add_argument("--struct-mode", choices=("values", "keys", "none"),
                   help="structured guidance mode (default values; none = stock)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="default for any job field, VALUE as JSON or plain text, e.g. --set cache_interval=2")
    p.add_argument("--device", default="auto", help="auto (accelerate's choice per process), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="model dtype (auto: float16 on CUDA, else float32)")
    p.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (GPU memory saver); freeswim also keeps its cache in host memory")
    p.add_argument("--overwrite", action="store_true", help="regenerate outputs that are already finished")
    p.set_defaults(run=run)


def _set_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Validated job-field defaults from the command line (``--steps`` etc., then every ``--set``)."""
    flags = {
        "samples": args.samples, "steps": args.steps, "guidance": args.guidance, "size": args.size,
        "negative_prompt": args.negative_prompt,
    }
    raw = {name: value for name, value in flags.items() if value is not None}
    if args.size is not None and args.size.isdigit():
        raw["size"] = int(args.size)
    if args.struct_mode is not None:
        raw["struct_mode"] = None if args.struct_mode == "none" else args.struct_mode
    for assignment in args.set:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. --set cache_interval=2")
        if name.strip() == "prompt":
            raise ValueError("--set prompt=...: prompts come from --prompts or --prompt")
        raw[name.strip()] = _set_value(value)
    try:
        return validate_fields(raw, Path.cwd())
    except ValueError as err:
        raise ValueError(f"command-line default {err}") from None


def _jobs(args: argparse.Namespace, defaults: dict[str, Any]) -> tuple[str, list[Job], list[JobError]]:
    """The job source's name, its valid jobs and its line errors, from --prompts or the --prompt list."""
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise ValueError(f"--prompts {args.prompts}: no such file")
        return args.prompts.name, *read_job_file(args.prompts, defaults)
    # as JSON lines, so a prompt is taken whole (no "#" comment or tab rule as in .txt files)
    lines = [json.dumps({"prompt": prompt}) for prompt in args.prompt]
    return "--prompt", *parse_lines(lines, "--prompt", True, Path.cwd(), defaults)


def _write_summary(out: Path, options, tally, seconds: float) -> None:
    """``<out>/summary.json``: what this run did, beside the per-item manifest (written atomically)."""
    from attnctl import __version__
    from attnctl.batch.atomic import write_text_atomic

    summary = {
        "attnctl_version": __version__, "method": options.method.name, "model": str(options.model),
        "seed": options.seed, "layout": options.layout, "done": tally.done, "skipped": tally.skipped,
        "failed": tally.failed, "failures": tally.failures, "seconds": round(seconds, 2),
        "manifest": "manifest.jsonl",
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    """Validate the command line, run the batch, print the summary (main process); returns the exit code."""
    try:
        validate_field("seed", args.seed)
    except ValueError as err:
        raise ValueError(f"--seed: {err}") from None
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    defaults = run_defaults(args)
    source, jobs, errors = _jobs(args, defaults)
    if not jobs and not errors:
        raise ValueError(f"{source}: no prompts (blank lines and # comments are skipped)")
    method = METHODS[args.method]
    if method.output == "video" and args.model is None:
        raise ValueError(f"--method {method.name} needs a Wan text-to-video checkpoint: pass --model <folder or hub id>")
    model = model_argument(args.model, method)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from attnctl.batch.runner import RunOptions, run_batch

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    options = RunOptions(
        method=method, model=model, out=args.out, source=source, layout=args.layout,
        seed=args.seed, device=args.device, dtype=args.dtype, cpu_offload=args.cpu_offload,
        overwrite=args.overwrite,
    )
    start = time.perf_counter()
    tally = run_batch(options, jobs, errors)

    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        total = tally.done + tally.skipped + tally.failed
        _write_summary(args.out, options, tally, time.perf_counter() - start)
        print(
            f"attnctl generate: {tally.done} done, {tally.skipped} skipped, {tally.failed} failed "
            f"({total} in all) in {time.perf_counter() - start:.1f} s; manifest: {args.out / 'manifest.jsonl'}"
        )
        if tally.failures:
            print("failed:\n  " + "\n  ".join(tally.failures), file=sys.stderr)
    # a multi-process launch ends its gloo/NCCL group here: left to the interpreter's exit, the group's threads
    # were seen to abort a worker ("terminate called without an active exception", SIGABRT) after its work
    state.destroy_process_group()
    return EXIT_FAILED if tally.failed else EXIT_OK
