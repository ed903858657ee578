"""What one UI server allows: caps on the work a request may ask for, time, concurrency and models held.

The caps come on top of the method specs' own limits (which the CLI shares): a request past a cap is refused
before any model runs, with a message naming the cap and the ``attnctl ui`` flag that raises it. Defaults are
sized for one GPU and stay usable on a CPU; every field is a flag of ``attnctl ui`` (docs/limits.md).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from .validation import user_error

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Limits:
    """Caps of one server.

    Args:
        max_pixels: width x height of any image or video frame a request makes (default 1024 x 1024).
        max_steps: denoising steps per pipeline call.
        max_frames: frames of a video request.
        time_limit: seconds one request may run; checked at every denoising step (the run stops there).
        concurrency: requests that run models at the same time (they share one queue).
        max_queue: requests that may wait in that queue.
        max_models: pipelines' model folders held in memory; the least recently used is dropped first.
        remote: the server is reachable beyond this machine: error messages name no server path.
    """

    max_pixels: int = 1024 * 1024
    max_steps: int = 100
    max_frames: int = 81
    time_limit: float = 600.0
    concurrency: int = 1
    max_queue: int = 32
    max_models: int = 2
    remote: bool = False

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_steps", "max_frames", "concurrency", "max_queue", "max_models"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected a whole number >= 1")
        if not isinstance(self.time_limit, (int, float)) or not 0 < self.time_limit < float("inf"):
            raise ValueError(f"time_limit={self.time_limit!r} is invalid: expected a finite number of seconds > 0")

    def deadline(self) -> tuple[float, float]:
        """``(monotonic time at which a request starting now must stop, the limit)`` for ``step_progress``."""
        return time.monotonic() + self.time_limit, self.time_limit

    def check_pixels(self, width: int, height: int, what: str) -> None:
        """Refuse a ``width`` x ``height`` output past ``max_pixels`` before any model runs."""
        if width * height > self.max_pixels:
            raise user_error(f"{what} is {width}x{height} = {width * height} pixels: this server allows at most "
                             f"{self.max_pixels} (started with `attnctl ui --max-pixels {self.max_pixels}`)")


def is_remote(host: str | None, share: bool = False) -> bool:
    """Whether a server bound to ``host`` (or shared through a Gradio link) is reachable from other machines."""
    if share:
        return True
    if host is None or host in LOCAL_HOSTS:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return True
