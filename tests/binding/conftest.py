"""The binding pipelines on the tiny models: (stock, Attend-and-Excite, SynGen) sharing one set of components."""

from __future__ import annotations

import diffusers
import pytest

from attnctl.models.families import detect_family


def _method_pipes(path) -> tuple:
    """The family's stock pipeline from ``path`` and both methods' variants on its components."""
    from attnctl import AttendAndExcitePipeline, SynGenPipeline

    family = detect_family(path)
    stock = getattr(diffusers, family.text_to_image).from_pretrained(path)
    pipes = (stock, *(method.variant_for(family)(**stock.components)
                      for method in (AttendAndExcitePipeline, SynGenPipeline)))
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _pipes_fixture(family: str):
    """A module fixture ``<family>_pipes``: :func:`_method_pipes` of the family's tiny folder."""

    def pipes(request):
        return _method_pipes(request.getfixturevalue(f"tiny_{family}_path"))

    return pytest.fixture(pipes, scope="module", name=f"{family}_pipes")


sd_pipes = _pipes_fixture("sd")
pixart_pipes = _pipes_fixture("pixart")
