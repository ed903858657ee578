"""Which process this is and what it runs on: accelerate's process state, ``--device`` and ``--dtype``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from .guard import die_with_parent

if TYPE_CHECKING:
    from accelerate import PartialState

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def process_state(device: str) -> PartialState:
    """accelerate's ``PartialState``, on CPU when asked to or when a multi-process launch has no GPU.

    ``accelerate launch --multi_gpu`` (or ``torchrun``) on a machine without GPUs starts several processes,
    but a default ``PartialState`` would then see no distribution and every process would do every item;
    asking for CPU state there makes them a gloo group that splits the work.
    """
    from accelerate import PartialState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        die_with_parent()  # killing the launcher must not leave this worker running
    state = PartialState(cpu=device == "cpu" or (world > 1 and not torch.cuda.is_available()))
    if world > 1 and state.num_processes != world:
        raise ValueError(
            f"{world} processes were launched but accelerate set up {state.num_processes}; every process would "
            "do every item. Launch with `accelerate launch --multi_gpu --num_processes N -m attnctl generate` "
            "(CPU or GPU) or `torchrun --nproc_per_node N -m attnctl generate`"
        )
    return state


def resolve_device(state: Any, device: str) -> torch.device:
    """``--device``: ``auto`` (and the state's own device type) use this process's accelerate device."""
    if device == "auto":
        return state.device
    try:
        requested = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: {err}; use auto, cpu, cuda, cuda:1 or mps") from None
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device auto or cpu")
    return state.device if requested.type == state.device.type and requested.index is None else requested


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``--dtype``: ``auto`` is float16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]
