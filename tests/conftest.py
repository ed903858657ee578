"""Shared fixtures: the tiny offline pipelines of every family (SD, SDXL, SD3, SD3.5, Flux, PixArt, Wan), saved once per session, and the slow marker."""

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
        contract_slow = item.name in getattr(item.cls, "slow_checks", ())  # tests/pipelines/contract.py
        if "slow" in item.keywords or contract_slow:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny SD pipeline written with ``save_pretrained``; tests load it with ``from_pretrained``."""
    from attnctl.models.tiny import save_tiny_sd_pipeline

    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def load_tiny_sd(tiny_sd_path):
    """``load_tiny_sd(pipeline_class)``: that pipeline loaded from the tiny SD folder, its progress bar off."""

    def load(pipeline_class):
        pipeline = pipeline_class.from_pretrained(tiny_sd_path)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return load


@pytest.fixture(scope="session")
def tiny_wan_folder(tmp_path_factory):
    """``tiny_wan_folder(variant)``: a tiny *stock* Wan pipeline of that variant (``WAN_VARIANTS``: t2v, i2v-2.1,
    i2v-2.2, ti2v-5b, vace) written with ``save_pretrained`` like a Hub checkpoint, once per session."""
    from attnctl.models.tiny_wan import save_tiny_wan_pipeline

    folders = {}

    def folder(variant: str = "t2v"):
        if variant not in folders:
            folders[variant] = save_tiny_wan_pipeline(tmp_path_factory.mktemp(f"tiny-wan-{variant}"), variant=variant)
        return folders[variant]

    return folder


@pytest.fixture(scope="session")
def tiny_wan_path(tiny_wan_folder):
    """A tiny *stock* ``WanPipeline`` (text-to-video) folder."""
    return tiny_wan_folder("t2v")


def _tiny_family_fixture(family: str, doc: str):
    """A session fixture ``tiny_<family>_path``: the family's tiny stock pipeline folder, written once."""

    def path(tmp_path_factory):
        from attnctl.models.tiny_families import save_tiny_family_pipeline

        return save_tiny_family_pipeline(family, tmp_path_factory.mktemp(f"tiny-{family}"))

    path.__doc__ = doc
    return pytest.fixture(path, scope="session", name=f"tiny_{family}_path")


tiny_sdxl_path = _tiny_family_fixture(
    "sdxl", "A tiny stock ``StableDiffusionXLPipeline`` folder (two CLIP encoders, text-time embedding)."
)
tiny_sd3_path = _tiny_family_fixture(
    "sd3", "A tiny stock SD3.0 ``StableDiffusion3Pipeline`` folder (joint attention, no q/k norm)."
)
tiny_sd35_path = _tiny_family_fixture(
    "sd35", "A tiny stock SD3.5 ``StableDiffusion3Pipeline`` folder (a dual-attention block, RMS q/k norms)."
)
tiny_flux_path = _tiny_family_fixture(
    "flux", "A tiny stock Flux-dev ``FluxPipeline`` folder (double- and single-stream blocks, guidance embeds)."
)
tiny_pixart_path = _tiny_family_fixture(
    "pixart", "A tiny stock ``PixArtSigmaPipeline`` folder (T5 cross-attention with a padding mask)."
)
