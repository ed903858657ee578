"""The model picker's cache: one load per (model, pipeline class), siblings share modules, errors readable."""

from __future__ import annotations

import gradio as gr
import pytest
from attnctl.app.models import ModelCache
from attnctl.pipelines.composer import PrimeComposerPipeline
from diffusers import DiffusionPipeline

from attnctl.methods.compose import SPEC as COMPOSE
from attnctl.methods.freeswim import SPEC as FREESWIM
from attnctl.methods.structured import SPEC as STRUCTURED
from attnctl.models import default as default_module


def test_each_model_loads_once_and_pipeline_classes_share_its_modules(tiny_sd_path, monkeypatch):
    loads = []
    original = DiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append((cls.__name__, str(args[0])))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    cache = ModelCache()
    structured = cache.get(str(tiny_sd_path), STRUCTURED)
    assert cache.get(f" {tiny_sd_path} ", STRUCTURED) is structured
    composer = cache.get(str(tiny_sd_path), COMPOSE)
    assert isinstance(composer, PrimeComposerPipeline)
    assert composer.unet is structured.unet and composer.text_encoder is structured.text_encoder
    assert loads == [("StructuredDiffusionPipeline", str(tiny_sd_path))]


def test_empty_picker_means_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setattr(default_module, "default_model_path", lambda alias="default": tmp_path)
    assert ModelCache().resolve("  ").source == str(tmp_path)

    def missing(alias="default"):
        raise FileNotFoundError("the embedded default model is missing from /x")

    monkeypatch.setattr(default_module, "default_model_path", missing)
    with pytest.raises(gr.Error, match="Model is empty and the embedded default model is missing from /x"):
        ModelCache().resolve("")


def test_unknown_models_say_what_is_wrong(tmp_path):
    with pytest.raises(gr.Error, match="Model 'no/such/place': no such folder, and not a hub id"):
        ModelCache().resolve("no/such/place")
    with pytest.raises(gr.Error, match="no model_index.json there"):
        ModelCache().resolve(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(gr.Error, match=r"Model '.*' could not be loaded as StructuredDiffusionPipeline: "):
        ModelCache().get(str(tmp_path), STRUCTURED)


def test_the_family_is_shown_and_a_method_for_another_family_refused(tiny_sd_path):
    assert ModelCache().describe(str(tiny_sd_path), STRUCTURED) == f"{tiny_sd_path} (Stable Diffusion 1.x/2.x)"
    with pytest.raises(gr.Error, match="freeswim does not apply to Stable Diffusion 1.x/2.x .*wan-t2v"):
        ModelCache().get(str(tiny_sd_path), FREESWIM)


def test_at_most_max_models_are_held_least_recently_used_first(tiny_sd_path, tmp_path):
    import shutil

    from attnctl.app.limits import Limits

    other = shutil.copytree(tiny_sd_path, tmp_path / "copy")
    cache = ModelCache(limits=Limits(max_models=1))
    first = cache.get(str(tiny_sd_path), STRUCTURED)
    cache.get(str(other), STRUCTURED)
    assert list(cache._models) == [str(other)]
    assert cache.get(str(tiny_sd_path), STRUCTURED) is not first  # dropped, loaded again


def test_remote_servers_do_not_say_which_paths_exist(tmp_path):
    from attnctl.app import validation

    validation.hide_paths(True)
    try:
        with pytest.raises(gr.Error) as missing:
            ModelCache().resolve("/srv/secret/model")
        with pytest.raises(gr.Error) as folder:
            ModelCache().resolve(str(tmp_path))
        assert missing.value.message.split("'")[2] == folder.value.message.split("'")[2]  # same wording
        assert "model_index" not in folder.value.message
        assert validation.user_error(f"file not found: {tmp_path}/x.png").message == "file not found: [path]"
    finally:
        validation.hide_paths(False)
