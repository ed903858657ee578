"""Model resolution shared by the CLI and the UI (attnctl.models.resolve): typed errors and the family check."""

from __future__ import annotations

import json

import pytest

from attnctl.batch.methods import METHODS
from attnctl.cli import main
from attnctl.models.resolve import (
    ModelNotFound,
    NotAPipelineFolder,
    UnsupportedFamily,
    resolve_model,
)


def test_folder_hub_id_and_default_aliases(tmp_path, monkeypatch):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    assert resolve_model(str(tmp_path)).origin == "folder"
    assert resolve_model("org/name").source == "org/name" and resolve_model("org/name").origin == "hub"
    for alias in (None, "", "  ", "default"):
        assert resolve_model(alias).origin == "default"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # a folder called "default" wins over the alias
    with pytest.raises(NotAPipelineFolder, match="'default': no model_index.json there"):
        resolve_model("default")


def test_typed_errors_name_the_model(tmp_path):
    with pytest.raises(ModelNotFound, match="'no/such/place': no such folder, and not a hub id"):
        resolve_model("no/such/place")
    with pytest.raises(NotAPipelineFolder) as caught:
        resolve_model(str(tmp_path))
    assert caught.value.model == str(tmp_path) and "model_index.json" in caught.value.reason


def _index(tmp_path, class_name: str):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return resolve_model(str(tmp_path))


def test_family_is_detected_and_methods_refuse_families_they_do_not_support(tmp_path):
    model = _index(tmp_path, "StableDiffusionXLPipeline")
    assert model.family().name == "sdxl"
    assert model.require(METHODS["structured"]).name == "sdxl"
    with pytest.raises(UnsupportedFamily, match="freeswim does not apply to Stable Diffusion XL .*wan-t2v"):
        model.require(METHODS["freeswim"])
    with pytest.raises(UnsupportedFamily, match="--method plain supports the family sd"):
        model.require(METHODS["plain"])
    with pytest.raises(UnsupportedFamily, match="'KandinskyPipeline' is not a model family attnctl supports"):
        _index(tmp_path, "KandinskyPipeline").family()


def test_the_cli_refuses_a_method_for_the_wrong_family_before_generating(tmp_path, tiny_sd_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "--method", "freeswim", "--model", str(tiny_sd_path), "--prompt", "a", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "freeswim does not apply to Stable Diffusion 1.x/2.x (sd)" in err
    assert "it supports the families wan-t2v, wan-i2v, wan-vace" in err and not out.exists()


def test_every_embedded_model_is_an_alias():
    from attnctl.models.default import EMBEDDED_MODELS
    from attnctl.models.resolve import DEFAULT_ALIASES

    assert set(DEFAULT_ALIASES) == set(EMBEDDED_MODELS)
