"""FreeSwim fixtures: a FreeSwimPipeline loaded from the session's tiny stock Wan checkpoint."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pipe(tiny_wan_path):
    from attnctl.pipelines.freeswim import FreeSwimPipeline

    pipeline = FreeSwimPipeline.from_pretrained(tiny_wan_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
