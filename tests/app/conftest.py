"""The app served on ephemeral localhost ports (tiny offline models; the embedded default model for the
browser test), and a gradio_client for it."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 (Gradio binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def served_app(tiny_sd_path, tiny_wan_path):
    """``attnctl.app.launch`` on the tiny models, returning at once; closed after the session."""
    from attnctl.app import launch

    demo = launch(
        model=str(tiny_sd_path),
        video_model=str(tiny_wan_path),
        port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
    )
    yield demo
    demo.close()


@pytest.fixture(scope="session")
def default_model_app():
    """The app as ``attnctl ui`` starts it: the embedded default model, no video model."""
    from attnctl.app import launch

    demo = launch(port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="session")
def client(served_app):
    from gradio_client import Client

    return Client(served_app.local_url, verbose=False)
