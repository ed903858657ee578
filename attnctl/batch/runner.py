"""Run a planned batch on one process or many: resume, split, generate, write atomically, merge the manifest.

Every process runs :func:`run_batch`; accelerate's ``PartialState`` says which one it is.

1. The main process deletes temporary files a killed run left behind. Barrier.
2. Every process reads the manifest and journals and drops the finished items (resume). Barrier, so no
   process writes before all have read.
3. The pending items are cut into contiguous shares with ``PartialState.split_between_processes``: each
   item belongs to exactly one process. Seeds come from the plan, so pixels do not depend on the split.
4. Each process loads the pipeline once, generates its share, writes every output atomically and journals
   it. A failing item is reported with its line number and the batch goes on.
5. Counts are gathered to every process; the main process merges the journals into ``manifest.jsonl``.
   Barrier, then every process returns the same totals (so ``accelerate launch`` exits the same way).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnctl.spec import DEFAULT_FPS, MethodSpec, MethodUnavailable

from .atomic import remove_stale_temps, write_text_atomic
from .guard import OutputLock, check_writable, disk_full
from .jobs import Job, JobError
from .layouts import check_layout, entry_files
from .manifest import Journal, merge_manifest, read_records
from .media import save_mp4, save_png
from .naming import inside
from .plan import Item, plan_items
from .processes import process_state, resolve_device, resolve_dtype
from .records import item_record, png_text
from .seeds import cpu_generator

#: Test seam: when set to N, a process hard-exits (no cleanup, no merge) right after journaling its N-th
#: item, exactly like a run killed mid-way. Used by the resume tests; never set it otherwise.
CRASH_AFTER_ENV = "ATTNCTL_TEST_CRASH_AFTER"
CRASH_EXIT_CODE = 99


@dataclass(frozen=True)
class RunOptions:
    """What one ``attnctl generate`` run does, after the command line has been validated."""

    method: MethodSpec
    model: str
    out: Path
    source: str = "<prompts>"
    layout: str = "flat"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    overwrite: bool = False


@dataclass
class Tally:
    """Counts of one run: finished now, skipped as already finished, failed (with their messages)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failed += 1
        self.failures.append(message)

    @classmethod
    def total(cls, tallies: Sequence[Mapping[str, Any]]) -> Tally:
        """The sum of per-process tallies (as dicts, the form ``gather_object`` carries)."""
        return cls(
            done=sum(t["done"] for t in tallies),
            skipped=sum(t["skipped"] for t in tallies),
            failed=sum(t["failed"] for t in tallies),
            failures=[m for t in tallies for m in t["failures"]],
        )


def _frame_size(frame: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or an (height, width, channels) array."""
    import numpy as np
    import PIL.Image

    if isinstance(frame, PIL.Image.Image):
        return frame.size
    height, width = np.asarray(frame).shape[:2]  # (H, W, C)
    return width, height


class _Worker:
    """Generates one process's share: loads the pipeline on first use, then one item at a time."""

    def __init__(self, options: RunOptions, device: torch.device, dtype: torch.dtype, process_index: int):
        self.options, self.device, self.dtype, self.process_index = options, device, dtype, process_index
        self.pipeline_class: type | None = None
        self.pipe: Any = None
        self.load_error: str | None = None

    def _load(self) -> None:
        """Import, check and load the pipeline once; a failure is kept and fails this process's items."""
        method, options = self.options.method, self.options
        try:
            cls = method.pipeline_class()
            method.check_signature(cls)
            pipe = cls.from_pretrained(options.model, dtype=self.dtype)
            if options.cpu_offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
        except MethodUnavailable as err:
            self.load_error = str(err)
        except Exception as err:  # any loading failure: one clear reason for every item of this process
            self.load_error = f"could not load --model {options.model} for --method {method.name} on {self.device}: {err}"
        else:
            self.pipeline_class, self.pipe = cls, pipe

    def generate(self, item: Item) -> dict[str, Any]:
        """Generate, write and describe one item; raises on failure (the caller reports and goes on)."""
        if self.pipe is None and self.load_error is None:
            self._load()
        if self.load_error is not None:
            raise MethodUnavailable(self.load_error)
        method, out = self.options.method, self.options.out
        video = method.output == "video"
        self.pipe.set_progress_bar_config(disable=None if video else True, leave=False, desc=item.path)
        kwargs = method.call_kwargs(item.fields, self.pipe, offload=self.options.cpu_offload)
        start = time.perf_counter()
        output = self.pipe(**kwargs, generator=cpu_generator(item.seed))
        media = method.media(output)
        seconds = time.perf_counter() - start

        parameters = method.parameters(item.fields, self.pipeline_class)
        width, height = _frame_size(media[0] if video else media)
        parameters["size"] = f"{width}x{height}"
        if video:
            parameters["fps"] = item.fields.get("fps", DEFAULT_FPS)
        extra = method.record(output) if method.record else {}
        record = item_record(
            item, method.name, self.options.model, self.options.source, parameters, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
            process=self.process_index,
            seconds=round(seconds, 3), **extra,
        )
        for relative, text in entry_files(self.options.layout, item.fields, item.job.entry).items():
            write_text_atomic(inside(out, relative), text)
        target = inside(out, item.path)
        if video:
            save_mp4(media, target, parameters["fps"])
        else:
            save_png(media, target, png_text(record))
        return record


def _finished(item: Item, records: Mapping[str, Mapping[str, Any]], out: Path) -> bool:
    """Whether the manifest records ``item``'s path with the same fingerprint and the file is there."""
    record = records.get(item.path)
    return record is not None and record.get("fingerprint") == item.fingerprint and (out / item.path).is_file()


def _progress(total: int, state: Any):
    from tqdm.auto import tqdm

    rank = f" [{state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    return tqdm(total=total, unit="item", desc=f"attnctl{rank}", disable=None, position=state.process_index)


def run_batch(
    options: RunOptions,
    jobs: Sequence[Job],
    job_errors: Sequence[JobError] = (),
    report: Callable[[str], None] | None = None,
) -> Tally:
    """Generate every item of ``jobs`` not already finished, in this process's share; returns the run's totals.

    ``job_errors`` (malformed lines) count as failures. ``report`` receives each failure message as it
    happens (default: stderr). Raises ``ValueError`` for options that cannot work (layout vs method,
    ``--cpu-offload`` without an accelerator) before anything is written.
    """
    check_layout(options.layout, options.method.output, options.method.name)
    state = process_state(options.device)
    device = resolve_device(state, options.device)
    if options.cpu_offload and device.type == "cpu":
        raise ValueError("--cpu-offload moves models between an accelerator and the CPU; it needs a GPU --device")
    dtype = resolve_dtype(options.dtype, device)
    if options.method.preflight is not None:
        options.method.preflight(jobs)
    identity = {"method": options.method.name, "model": options.model, "dtype": options.dtype}
    items = plan_items(jobs, options.method, options.layout, options.seed, identity)

    def say(message: str) -> None:
        from tqdm.auto import tqdm

        (report or (lambda m: tqdm.write(m, file=sys.stderr)))(message)

    tally = Tally()
    if state.is_main_process:
        unused = sorted({name for job in jobs for name in job.fields} - options.method.fields)
        if unused:
            say(f"note: --method {options.method.name} does not use the field(s) {', '.join(unused)}; ignored")
        for error in job_errors:
            tally.fail(str(error))
            say(f"skipped {error}")
    lock = _claim_out(options.out, state)
    try:
        records = {} if options.overwrite else read_records(options.out)
        pending = [item for item in items if not _finished(item, records, options.out)]
        if state.is_main_process:
            tally.skipped = len(items) - len(pending)
        state.wait_for_everyone()
        with state.split_between_processes(pending) as share:
            _generate_share(options, share, _Worker(options, device, dtype, state.process_index), tally, say, state)

        from accelerate.utils import gather_object

        total = Tally.total(gather_object([asdict(tally)]))
        if state.is_main_process:
            _merge(options.out, say)
        state.wait_for_everyone()
    finally:
        if lock is not None:
            lock.release()
    return total


def _claim_out(out: Path, state: Any) -> OutputLock | None:
    """Lock ``out`` for this run, check that it is writable and clear what a killed run left (main process),
    before any model loads; every process raises the same ``ValueError`` when that fails."""
    from accelerate.utils import broadcast_object_list

    lock, problem = None, None
    if state.is_main_process:
        try:
            check_writable(out)
            lock = OutputLock(out).acquire()
            remove_stale_temps(out)
        except (ValueError, OSError) as err:
            problem = str(err)
    if state.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise ValueError(problem)
    return lock


def _generate_share(options: RunOptions, share: Sequence[Item], worker: _Worker, tally: Tally,
                    say: Callable[[str], None], state: Any) -> None:
    """Generate and journal this process's items; a bad item is reported and skipped, a full disk stops here."""
    crash_after = int(os.environ.get(CRASH_AFTER_ENV, "0"))
    journal = Journal(options.out, state.process_index)
    with _progress(len(share), state) as bar:
        for item in share:
            try:
                journal.append(worker.generate(item))
                tally.done += 1
            except Exception as err:  # one bad item never stops the batch; a full disk does
                reason = str(err) if isinstance(err, (ValueError, MethodUnavailable)) else repr(err)
                if disk_full(err):
                    reason = (f"no space left on device ({err.filename or options.out}); stopped here, every output "
                              "finished before is kept: free some space and rerun the same command to resume")
                message = f"{options.source}:{item.job.line}: {item.path}: {reason}"
                tally.fail(message)
                say(f"failed {message}")
                if disk_full(err):
                    return
            bar.update()
            if crash_after and tally.done == crash_after:
                os._exit(CRASH_EXIT_CODE)


def _merge(out: Path, say: Callable[[str], None]) -> None:
    """Merge the journals into the manifest; with no space left the journals stay (the next run merges)."""
    try:
        merge_manifest(out)
    except OSError as err:
        if not disk_full(err):
            raise
        say(f"note: {out / 'manifest.jsonl'} was not rewritten (no space left on device); the finished outputs "
            f"are recorded in {out / '.attnctl'} and the next run merges them")
