"""The served app: local binding, analytics off, one shared queue for model runs, examples on every tab."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import gradio as gr
from attnctl.app.models import MODEL_QUEUE

MODEL_ENDPOINTS = {"load_models", "parse_phrases", "structured", "compose", "layout", "freeswim"}


def _descendants(block):
    for child in getattr(block, "children", []):
        yield child
        yield from _descendants(child)


def test_binds_to_localhost_with_analytics_off(served_app):
    assert urlparse(served_app.local_url).hostname == "127.0.0.1"
    assert served_app.share is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert served_app.analytics_enabled is False


def test_model_runs_share_one_queue_of_one(served_app):
    assert served_app._queue.default_concurrency_limit == 1
    events = {fn.api_name: fn for fn in served_app.fns.values() if fn.api_name in MODEL_ENDPOINTS}
    assert set(events) == MODEL_ENDPOINTS
    assert {fn.concurrency_id for fn in events.values()} == {MODEL_QUEUE}


def test_every_tab_has_examples(served_app):
    tabs = [block for block in served_app.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs
    for tab in tabs:
        assert any(isinstance(block, gr.Dataset) for block in _descendants(tab)), (
            f"tab {tab.label!r} has no examples"
        )


def test_load_reports_both_models(client, tiny_sd_path, tiny_wan_path):
    status = client.predict(str(tiny_sd_path), str(tiny_wan_path), api_name="/load_models")
    assert f"`{tiny_sd_path}` (Stable Diffusion 1.x/2.x) and `{tiny_wan_path}` (Wan 2.1/2.2 text-to-video)" in status
