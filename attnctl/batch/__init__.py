"""Batch generation behind ``attnctl generate``: job files, seeds, layouts, atomic outputs, manifest, scale-out.

Modules, each with one job: :mod:`.methods` (the ``--method`` registry of method specs, :mod:`attnctl.spec`),
:mod:`.fields` (job fields, validated by the specs' kinds), :mod:`.jobs` (``.txt``/``.jsonl`` parsing with
line-numbered errors), :mod:`.seeds` (per-item seeds), :mod:`.naming` (safe unique names), :mod:`.layouts`
(benchmark folder layouts), :mod:`.plan` (items, fingerprints), :mod:`.atomic` and :mod:`.media` (atomic
PNG/mp4 writes), :mod:`.records` (what is recorded per item), :mod:`.manifest` (journals and the merged
manifest, damaged lines skipped), :mod:`.guard` (the ``--out`` lock, writability, a full disk, workers that die
with their launcher), :mod:`.processes` (accelerate state, device, dtype) and :mod:`.runner` (resume,
accelerate split, the loop). Heavy imports (torch, diffusers) wait
until used, so ``attnctl --help`` stays fast.
"""

from __future__ import annotations

from attnctl._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        ".jobs": ("Job", "JobError", "read_job_file"),
        ".layouts": ("LAYOUTS",),
        ".methods": ("METHODS",),
        "attnctl.spec": ("MethodSpec",),
        ".runner": ("RunOptions", "Tally", "run_batch"),
        ".seeds": ("derive_seed",),
    },
)
