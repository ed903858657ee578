"""Shared fixtures: the tiny offline SD and Wan pipelines, saved once per session, and the slow marker."""

from __future__ import annotations

import os

import pytest
import torch

# The suite runs tiny models, far below the size where intra-op threads pay off; on a shared 2-core machine two
# threads made them an order of magnitude slower, so every test runs on one (the CLI's subprocesses do the same).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ATTNCTL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set ATTNCTL_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny SD pipeline written with ``save_pretrained``; tests load it with ``from_pretrained``."""
    from attnctl.models.tiny import save_tiny_sd_pipeline

    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_wan_path(tmp_path_factory):
    """A tiny *stock* ``WanPipeline`` written with ``save_pretrained``, like a Hub checkpoint."""
    from attnctl.models.tiny_wan import save_tiny_wan_pipeline

    return save_tiny_wan_pipeline(tmp_path_factory.mktemp("tiny-wan"))
