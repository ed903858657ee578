"""The fused CPU window kernel (backend ``"cpu"``): C with AVX-512 intrinsics, built on first use.

``csrc/window_cpu.c`` visits only each query's window: the queries of one (height, width) position that share a
frame window (all frames, when the window spans them as in FreeSwim) are one work unit with exactly the same
keys, so no score outside a window is computed (the ``tiled`` backend's SDPA blocks compute the union of a
tile's windows, 1.47x the needed work for 8-row tiles and 15-row windows). Keys and values are copied into
strips of ``STRIP_KEYS`` key columns so that a row of positions slides over keys that stay in the L2 cache.

The library is compiled once per source, flags and compiler with the system C compiler (``$CC``, else ``cc``
or ``gcc``) into ``$ATTNCTL_KERNEL_CACHE`` (default ``~/.cache/attnctl/kernels``) and loaded with ctypes; calls
release the GIL, so ``torch.get_num_threads()`` Python threads split the rows of positions. Where there is no
x86-64 CPU with AVX-512, no compiler, or the build fails, :func:`cpu_kernel_error` says why and the default
backend stays ``tiled``.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import torch

from .scratch import scratch
from .windows import inward_starts

SOURCE = Path(__file__).with_name("csrc") / "window_cpu.c"
CFLAGS = ("-std=c11", "-O3", "-mavx512f", "-mavx512dq", "-mfma", "-fPIC", "-shared")
GROUP = 8  # queries per work unit in the C kernel: frames that share one frame window
STRIP_KEYS = 32  # key columns per strip; 8x64x64 grid, 15-column window: 18 query columns per strip, 20% faster
MIN_EFFICIENCY = 0.45  # default-backend threshold: at 0.47 (4 frames, 15x15) 1.06x faster than tiled, at 0.21 0.63x
PAD = 16  # zero floats after each key row: the kernel's 16-wide loads may run past a window's last column

_INT, _PTR = ctypes.c_int64, ctypes.c_void_p
_ARGTYPES = [_PTR, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR] + [_INT] * 8 + [_PTR] * 3 + [ctypes.c_float] + [_INT] * 8


def kernel_cache_dir() -> Path:
    """Where built kernels live: ``$ATTNCTL_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/attnctl/kernels``."""
    if os.environ.get("ATTNCTL_KERNEL_CACHE"):
        return Path(os.environ["ATTNCTL_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnctl" / "kernels"


@lru_cache(maxsize=1)
def _build() -> ctypes._CFuncPtr | str:
    """The kernel's C function, or the reason it cannot run on this machine."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"it needs an x86-64 CPU (this one is {platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        return f"it needs a CPU with AVX-512 (PyTorch reports {capability})"
    found = shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])  # $CC may be "ccache gcc"
    if not compiler:
        return "it needs a C compiler to build csrc/window_cpu.c (set $CC or install gcc)"
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=True).stdout
        digest = hashlib.sha256(SOURCE.read_bytes() + repr((CFLAGS, compiler, version)).encode()).hexdigest()[:16]
        target = kernel_cache_dir() / f"window_cpu-{digest}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so")  # then an atomic rename
            os.close(handle)
            built = subprocess.run([*compiler, *CFLAGS, "-o", partial, str(SOURCE), "-lm"], capture_output=True, text=True)
            if built.returncode:
                os.unlink(partial)
                return f"building csrc/window_cpu.c with {shlex.join(compiler)} failed: {built.stderr.strip()[-500:]}"
            os.replace(partial, target)
        function = ctypes.CDLL(str(target)).attnctl_window_attention
    except (OSError, subprocess.CalledProcessError) as error:
        return f"building or loading csrc/window_cpu.c failed: {error}"
    function.restype, function.argtypes = ctypes.c_int, _ARGTYPES
    return function


def cpu_kernel_error() -> str | None:
    """Why the fused kernel cannot run on this machine, or None when it can (builds it on first call)."""
    built = _build()
    return built if isinstance(built, str) else None


def unsupported(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> str | None:
    """Why the fused kernel cannot take these tensors, or None when it can: the one place for its checks."""
    tensors = (query, key, value)
    if any(t.device.type != "cpu" for t in tensors):
        return f"it runs on CPU tensors (got {query.device}, {key.device}, {value.device})"
    if any(t.dtype != torch.float32 for t in tensors):
        return f"it computes float32 (got {query.dtype}, {key.dtype}, {value.dtype})"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "it has no backward pass; use backend='tiled' or torch.no_grad()"
    return cpu_kernel_error()


@lru_cache(maxsize=64)  # asked on every default-backend call: once per grid and window
def kernel_efficiency(grid: tuple[int, ...], window: tuple[int, ...]) -> float:
    """Share of the kernel's multiply-adds that a window needs: work units fill ``group / GROUP`` of its 8-row
    blocks (frames sharing a frame window; one query on 1-D and 2-D grids) and a window row of ``w`` keys fills
    ``w / (16 ceil(w / 16))`` of its 16-lane vectors."""
    frames, window_frames = (grid[0], window[0]) if len(grid) == 3 else (1, 1)
    starts = inward_starts(frames, window_frames).tolist()
    units = sum(math.ceil(starts.count(start) / GROUP) for start in set(starts))
    width = window[-1]
    return frames / (units * GROUP) * width / (16 * math.ceil(width / 16))


def cpu_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Inward-window attention, (batch, heads, tokens, head_dim) float32 CPU tensors in and out (any strides).

    With ``return_lse`` also each query's natural log-sum-exp over its window, (batch, heads, tokens) float32.
    """
    reason = unsupported(query, key, value)
    if reason is not None:
        raise ValueError(f"backend='cpu' cannot run here: {reason}")
    kernel = _build()
    grid3 = (1,) * (3 - len(grid)) + tuple(grid)  # (frames, height, width)
    window3 = (1,) * (3 - len(window)) + tuple(window)
    frames, height, width = grid3
    batch, heads, tokens, dim = query.shape
    scale = dim**-0.5 if scale is None else float(scale)
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty(query.shape, dtype=torch.float32)  # (batch, heads, tokens, dim)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32) if return_lse else None
    starts = _starts(grid3, window3)
    keys, values = key.unflatten(2, grid3), value.unflatten(2, grid3)  # (batch, heads, frames, height, width, dim)
    rows, strip = batch * heads * height, (batch, heads, frames, height)
    for first, stop, key_first, columns in _strips(width, window3[2]):
        key_row, value_row = dim * columns + PAD, columns * dim + PAD
        # K^T per (frame, row): (dim, columns), then PAD zeros
        kt = scratch("cpu keys", math.prod(strip) * key_row, torch.float32).view(*strip, key_row)
        kt[..., : dim * columns].view(*strip, dim, columns).copy_(
            keys[..., key_first : key_first + columns, :].transpose(-1, -2)
        )
        kt[..., dim * columns :].zero_()
        # V per (frame, row): (columns, dim)
        vs = scratch("cpu values", math.prod(strip) * value_row, torch.float32).view(*strip, value_row)
        vs[..., : columns * dim].view(*strip, columns, dim).copy_(values[..., key_first : key_first + columns, :])

        # the kernel over rows [first job, stop job) of positions, the call's remaining two arguments
        run = partial(
            kernel,
            query.data_ptr(), query.stride(0), query.stride(1), query.stride(2),
            kt.data_ptr(), vs.data_ptr(), out.data_ptr(), 0 if lse is None else lse.data_ptr(),
            heads, frames, height, width, dim, *window3, *(s.data_ptr() for s in starts), scale,
            key_row, value_row, columns, first, stop, key_first,
        )  # fmt: skip
        threads = max(1, min(torch.get_num_threads(), rows))
        bounds = [rows * index // threads for index in range(threads + 1)]
        failed = run(0, rows) if threads == 1 else any(_pool().map(run, bounds[:-1], bounds[1:]))
        if failed:
            raise MemoryError("the 'cpu' window kernel could not allocate its scratch memory")
    return (out, lse) if return_lse else out


@lru_cache(maxsize=32)
def _starts(grid: tuple[int, int, int], window: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Inward window starts per axis, contiguous int64 (kept alive by the cache while the kernel reads them)."""
    return tuple(inward_starts(size, width).contiguous() for size, width in zip(grid, window))


@lru_cache(maxsize=32)
def _strips(width: int, window: int) -> tuple[tuple[int, int, int, int], ...]:
    """(first query column, stop, first key column, key columns) per strip of the last axis."""
    starts = inward_starts(width, window).tolist()
    queries = max(GROUP, STRIP_KEYS - (window - 1))
    strips = []
    for first in range(0, width, queries):
        stop = min(width, first + queries)
        strips.append((first, stop, starts[first], starts[stop - 1] + window - starts[first]))
    return tuple(strips)


_POOLS: dict[int, ThreadPoolExecutor] = {}  # process id -> its pool: a forked child has none of its parent's threads


def _pool() -> ThreadPoolExecutor:
    if os.getpid() not in _POOLS:
        _POOLS[os.getpid()] = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="attnctl-window")
    return _POOLS[os.getpid()]
