"""The run plan: every output the job file asks for, with its seed, unique path and fingerprint.

Planning is pure and deterministic (no model, no files), so every process of a scaled-out run computes the
same plan and the same item order. An item's *fingerprint* hashes what decides its pixels (method, model,
dtype, seed and the fields the method reads); a rerun skips an item whose path the manifest records with the
same fingerprint, and regenerates it when any of those changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attnctl.spec import MethodSpec

from .jobs import Job
from .layouts import item_path
from .naming import make_unique
from .seeds import item_seed


@dataclass(frozen=True)
class Item:
    """One output: its job entry, sample index, seed, path relative to ``--out`` and fingerprint."""

    job: Job
    sample: int
    seed: int
    path: str
    fingerprint: str

    @property
    def fields(self) -> Mapping[str, Any]:
        return self.job.fields


def fingerprint(identity: Mapping[str, Any], fields: Mapping[str, Any], method: MethodSpec, seed: int) -> str:
    """SHA-256 over the run identity (method, model, dtype), the seed and the method's generation fields."""
    used = {k: v for k, v in fields.items() if k in method.fields and k not in method.runner_fields}
    blob = json.dumps({**identity, "seed": seed, "fields": used}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def plan_items(
    jobs: Sequence[Job], method: MethodSpec, layout: str, run_seed: int, identity: Mapping[str, Any]
) -> list[Item]:
    """Every item of ``jobs`` in job-file order (entry, then sample), with unique paths."""
    keys, paths = [], []
    for job in jobs:
        for sample in range(job.fields.get("samples", 1)):
            keys.append((job, sample))
            paths.append(item_path(layout, job.fields, job.entry, sample, len(paths), method.output))
    items = []
    for (job, sample), path in zip(keys, make_unique(paths), strict=True):
        seed = item_seed(run_seed, job.entry, sample, job.fields.get("seed"))
        items.append(Item(job, sample, seed, path, fingerprint(identity, job.fields, method, seed)))
    return items
