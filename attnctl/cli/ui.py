"""``attnctl ui``: start the Gradio app (``attnctl.app``), imported only when asked for."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .common import EXIT_OK, model_argument


def add_parser(commands: Any) -> None:
    """Register ``ui`` and its options."""
    p = commands.add_parser(
        "ui", help="start the web UI (Gradio) on this machine",
        description="Start the attnctl Gradio app. It binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--model", help="diffusers folder or hub id (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
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
    load_launch()(model=model, host=args.host, port=args.port, share=args.share)
    return EXIT_OK
