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


@pytest.fixture
def pipe(tiny_wan_path):
    from attnctl.pipelines.freeswim import FreeSwimPipeline

    pipeline = FreeSwimPipeline.from_pretrained(tiny_wan_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
