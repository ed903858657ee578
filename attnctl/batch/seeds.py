"""Per-item seeds: one CPU ``torch.Generator`` per output, seeded from (run seed, entry index, sample index).

An item's seed depends only on the run seed and the item's place in the job file, never on batch size, on
the order items run in, or on which process runs it; so a resumed or scaled-out run draws the same noise.

Derivation (stable across Python versions and platforms)::

    digest = sha256(f"attnctl-seed/{run_seed}/{entry}/{sample}".encode("utf-8"))
    seed   = int.from_bytes(digest[:8], "big") % 2**63

A line that sets ``seed`` uses ``seed + sample`` instead, so ``{"seed": 42}`` reproduces a recorded image
exactly. The generator lives on the CPU (diffusers moves the noise to the device), so a seed gives the same
initial latents on every device.
"""

from __future__ import annotations

import hashlib

import torch

SEED_MODULUS = 2**63


def derive_seed(run_seed: int, entry: int, sample: int) -> int:
    """The seed of sample ``sample`` of entry ``entry`` in a run seeded with ``run_seed`` (module docstring)."""
    digest = hashlib.sha256(f"attnctl-seed/{run_seed}/{entry}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_MODULUS


def item_seed(run_seed: int, entry: int, sample: int, line_seed: int | None = None) -> int:
    """``line_seed + sample`` when the job line sets a seed, else :func:`derive_seed`."""
    return line_seed + sample if line_seed is not None else derive_seed(run_seed, entry, sample)


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``: one per item, never shared between items."""
    return torch.Generator(device="cpu").manual_seed(seed)
