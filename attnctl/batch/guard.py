"""What keeps one ``--out`` folder sound under faults: one run at a time, writability checked before any model
loads, a full disk stopping the run cleanly, and workers that die with their launcher.

* :class:`OutputLock`: an exclusive ``flock`` on ``<out>/.attnctl/lock`` held by the main process for the whole
  run. The kernel drops it when the process ends, however it ends, so a killed run never leaves a stale lock.
  The file names its holder (pid, host, start time) for the message a second run prints.
* :func:`check_writable`: writes and deletes a probe file in ``<out>/.attnctl``.
* :func:`disk_full`: whether an ``OSError`` means no space (or quota) left.
* :func:`die_with_parent`: a worker of a multi-process launch asks the kernel for SIGTERM when its parent (the
  ``torchrun``/``accelerate launch`` agent) dies, so killing the launcher leaves no workers behind (Linux).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import fcntl
import os
import signal
import socket
import sys
from pathlib import Path

from .atomic import write_text_atomic
from .manifest import STATE_DIR

LOCK_NAME = "lock"


class OutputBusy(ValueError):
    """Another run holds the ``--out`` folder."""


class OutputLock:
    """An exclusive lock on one ``--out`` folder (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out, self.path = out, out / STATE_DIR / LOCK_NAME
        self._handle = None

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`OutputBusy` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise OutputBusy(f"--out {self.out} is in use by another attnctl generate run ({holder}); wait for it "
                             "to finish or choose another --out") from None
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def check_writable(out: Path) -> None:
    """Raise ``ValueError`` when files cannot be created in ``out`` (read-only, no permission, no space)."""
    probe = out / STATE_DIR / f"write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(probe, "attnctl checks that --out is writable before loading the model\n")
        probe.unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out} is not writable ({err.strerror or err}); choose a folder you can write "
                         "to") from None


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) has no space left."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM when the parent process dies (Linux; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
