"""attnctl's Gradio web UI: one tab per method, a shared model picker, ``launch()`` for ``attnctl ui``.

Gradio's usage analytics are off unless ``GRADIO_ANALYTICS_ENABLED=True`` is set in the environment; the
variable is set before Gradio is imported.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .main import build_app, launch  # noqa: E402 (after the analytics switch)

__all__ = ["build_app", "launch"]
