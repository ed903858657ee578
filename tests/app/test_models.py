"""The model picker's cache: one load per (model, pipeline class), siblings share modules, errors readable."""

from __future__ import annotations

import gradio as gr
import pytest
from attnctl.app import models as models_module
from attnctl.app.models import ModelCache
from attnctl.pipelines.composer import PrimeComposerPipeline
from diffusers import DiffusionPipeline

from attnctl import StructuredDiffusionPipeline


def test_each_model_loads_once_and_pipeline_classes_share_its_modules(tiny_sd_path, monkeypatch):
    loads = []
    original = DiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append((cls.__name__, str(args[0])))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    cache = ModelCache()
    structured = cache.get(str(tiny_sd_path), StructuredDiffusionPipeline)
    assert cache.get(f" {tiny_sd_path} ", StructuredDiffusionPipeline) is structured
    composer = cache.get(str(tiny_sd_path), PrimeComposerPipeline)
    assert isinstance(composer, PrimeComposerPipeline)
    assert composer.unet is structured.unet and composer.text_encoder is structured.text_encoder
    assert loads == [("StructuredDiffusionPipeline", str(tiny_sd_path))]


def test_empty_picker_means_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setattr(models_module, "default_model_path", lambda: tmp_path)
    assert ModelCache().resolve("  ") == str(tmp_path)

    def missing():
        raise FileNotFoundError("the embedded default model is missing from /x")

    monkeypatch.setattr(models_module, "default_model_path", missing)
    with pytest.raises(gr.Error, match="Model is empty and the embedded default model is missing from /x"):
        ModelCache().resolve("")


def test_unknown_models_say_what_is_wrong(tmp_path):
    with pytest.raises(gr.Error, match="Model 'no/such/place': no such folder, and not a hub id"):
        ModelCache().resolve("no/such/place")
    with pytest.raises(gr.Error, match="no model_index.json there"):
        ModelCache().resolve(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(
        gr.Error, match=r"Model '.*' \(folder\) could not be loaded as StructuredDiffusionPipeline"
    ):
        ModelCache().get(str(tmp_path), StructuredDiffusionPipeline)
