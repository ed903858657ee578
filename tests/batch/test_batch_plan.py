"""Seeds, the plan and fingerprints: deterministic, independent of order, sensitive to what changes pixels."""

from __future__ import annotations

import hashlib

import torch

from attnctl.batch.jobs import Job
from attnctl.batch.methods import METHODS
from attnctl.batch.plan import plan_items
from attnctl.batch.seeds import SEED_MODULUS, cpu_generator, derive_seed, item_seed

IDENTITY = {"method": "plain", "model": "m", "dtype": "auto"}


def test_derive_seed_follows_the_documented_formula():
    digest = hashlib.sha256(b"attnctl-seed/5/3/2").digest()
    assert derive_seed(5, 3, 2) == int.from_bytes(digest[:8], "big") % 2**63
    seeds = {derive_seed(0, e, s) for e in range(50) for s in range(4)}
    assert len(seeds) == 200 and all(0 <= x < SEED_MODULUS for x in seeds)
    assert derive_seed(1, 0, 0) != derive_seed(0, 0, 0)


def test_line_seed_counts_up_per_sample_and_generators_are_independent():
    assert [item_seed(9, 4, s, line_seed=42) for s in range(3)] == [42, 43, 44]
    a, b = cpu_generator(7), cpu_generator(7)
    first = torch.randn(4, generator=a)
    torch.randn(100, generator=b)  # another item drawing more noise does not shift the next item's seed
    assert torch.equal(first, torch.randn(4, generator=cpu_generator(7)))


def test_plan_items_order_paths_and_seeds():
    jobs = [Job(0, 1, {"prompt": "a", "samples": 2}), Job(2, 5, {"prompt": "b", "seed": 11})]
    items = plan_items(jobs, METHODS["plain"], "t2i-compbench", 3, IDENTITY)
    assert [(i.job.entry, i.sample) for i in items] == [(0, 0), (0, 1), (2, 0)]
    assert [i.path for i in items] == ["samples/a_000000.png", "samples/a_000001.png", "samples/b_000002.png"]
    assert [i.seed for i in items] == [derive_seed(3, 0, 0), derive_seed(3, 0, 1), 11]
    # the same entry plans to the same item whatever comes before it
    alone = plan_items(jobs[1:], METHODS["plain"], "flat", 3, IDENTITY)[0]
    together = plan_items(jobs, METHODS["plain"], "flat", 3, IDENTITY)[2]
    assert (alone.path, alone.seed, alone.fingerprint) == (together.path, together.seed, together.fingerprint)


def test_duplicate_names_become_unique_paths():
    jobs = [Job(0, 1, {"prompt": "a", "name": "x"}), Job(1, 2, {"prompt": "b", "name": "X"})]
    assert [i.path for i in plan_items(jobs, METHODS["plain"], "flat", 0, IDENTITY)] == ["x.png", "X-2.png"]


def test_fingerprint_changes_with_what_changes_pixels_only():
    def fp(fields, method="plain", identity=IDENTITY):
        return plan_items([Job(0, 1, fields)], METHODS[method], "flat", 0, identity)[0].fingerprint

    base = fp({"prompt": "a", "steps": 2})
    assert fp({"prompt": "a", "steps": 2, "metadata": {"k": 1}, "name": "n"}) == base  # bookkeeping only
    assert fp({"prompt": "a", "steps": 2, "phrases": ["a"]}) == base  # plain ignores phrases
    assert fp({"prompt": "a", "steps": 3}) != base
    assert fp({"prompt": "a", "steps": 2}, identity={**IDENTITY, "model": "other"}) != base
    assert fp({"prompt": "a", "steps": 2, "phrases": ["a"]}, "structured") != fp({"prompt": "a", "steps": 2}, "structured")
