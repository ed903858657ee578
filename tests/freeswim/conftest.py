"""FreeSwim fixtures: a tiny stock Wan checkpoint saved once per session, and single-threaded torch.

The tiny tensors here are far below what intra-op threads pay off for; on a shared 2-core machine two threads
make the tests an order of magnitude slower, so every FreeSwim test runs on one thread (restored after).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_wan_path(tmp_path_factory):
    """A tiny *stock* ``WanPipeline`` written with ``save_pretrained``, like a Hub checkpoint."""
    from attnctl.models.tiny_wan import save_tiny_wan_pipeline

    return save_tiny_wan_pipeline(tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture
def pipe(tiny_wan_path):
    from attnctl.pipelines.freeswim import FreeSwimPipeline

    pipeline = FreeSwimPipeline.from_pretrained(tiny_wan_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
