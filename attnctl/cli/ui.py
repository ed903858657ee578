"""``attnctl ui``: start the Gradio app (``attnctl.app``), imported only when asked for."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .common import EXIT_OK, model_argument, model_help


def add_parser(commands: Any) -> None:
    """Register ``ui`` and its options."""
    p = commands.add_parser(
        "ui", help="start the web UI (Gradio) on this machine",
        description="Start the attnctl Gradio app. It binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--model", help=model_help())
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    caps = p.add_argument_group("limits", "what one request may ask for (docs/limits.md)")
    caps.add_argument("--max-pixels", type=int, default=1024 * 1024,
                      help="width x height of an image or video frame (default 1048576 = 1024x1024)")
    caps.add_argument("--max-steps", type=int, default=100, help="denoising steps per run (default 100)")
    caps.add_argument("--max-frames", type=int, default=81, help="frames of a video (default 81)")
    caps.add_argument("--time-limit", type=float, default=600.0,
                      help="seconds one request may run; it stops at the next step after (default 600)")
    caps.add_argument("--concurrency", type=int, default=1,
                      help="requests running models at once; the rest wait in the queue (default 1)")
    caps.add_argument("--max-queue", type=int, default=32, help="requests waiting in the queue (default 32)")
    caps.add_argument("--max-models", type=int, default=2,
                      help="models held in memory; the least recently used is dropped (default 2)")
    p.set_defaults(run=run)


def load_launch() -> Any:
    """The app's ``launch`` function; ``ValueError`` with the fix when the app or Gradio is not installed."""
    try:
        app = importlib.import_module("attnctl.app")
    except ImportError as err:
        raise ValueError(f"the web UI needs Gradio: pip install 'attnctl[ui]' ({err})") from None
    launch = getattr(app, "launch", None)
    if launch is None:
        raise ValueError("the web UI is not part of this attnctl installation (attnctl.app has no launch())")
    return launch


def run(args: argparse.Namespace) -> int:
    """Start the app and block until it is closed."""
    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: expected 1 to 65535")
    model = model_argument(args.model) if args.model is not None else None  # None: the app's default model
    launch = load_launch()
    from attnctl.app.limits import Limits

    limits = Limits(
        max_pixels=args.max_pixels, max_steps=args.max_steps, max_frames=args.max_frames,
        time_limit=args.time_limit, concurrency=args.concurrency, max_queue=args.max_queue,
        max_models=args.max_models,
    )
    launch(model=model, host=args.host, port=args.port, share=args.share, limits=limits)
    return EXIT_OK
