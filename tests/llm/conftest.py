"""The LLM tests run tiny models: one intra-op thread is fastest, and far faster on a shared, busy CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
