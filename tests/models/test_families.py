"""The family registry: detection from model_index.json, capabilities and the errors for unsupported models."""

from __future__ import annotations

import json

import pytest

from attnctl.models.families import CAPABILITIES, FAMILIES, detect_family, families_supporting, get_family


def _index(class_name, **components):
    return {"_class_name": class_name, **{k: list(v) for k, v in components.items()}}


@pytest.mark.parametrize(
    ("class_name", "family"),
    [("StableDiffusionPipeline", "sd"), ("StableDiffusionXLImg2ImgPipeline", "sdxl"),
     ("StableDiffusion3Pipeline", "sd3"), ("FluxPipeline", "flux"), ("PixArtSigmaPipeline", "pixart"),
     ("WanPipeline", "wan-t2v"), ("WanImageToVideoPipeline", "wan-i2v"), ("WanVACEPipeline", "wan-vace")],
)
def test_diffusers_class_names_map_to_their_family(class_name, family):
    assert detect_family({"_class_name": class_name}).name == family


@pytest.mark.parametrize(
    ("components", "family"),
    [(dict(unet=("diffusers", "UNet2DConditionModel"), text_encoder=("transformers", "CLIPTextModel")), "sd"),
     (dict(unet=("diffusers", "UNet2DConditionModel"), text_encoder=("transformers", "CLIPTextModel"),
           text_encoder_2=("transformers", "CLIPTextModelWithProjection")), "sdxl"),
     (dict(transformer=("diffusers", "FluxTransformer2DModel")), "flux"),
     (dict(transformer=("diffusers", "WanTransformer3DModel")), "wan-t2v"),
     (dict(transformer=("diffusers", "WanTransformer3DModel"), image_encoder=("transformers", "X")), "wan-i2v")],
)
def test_classes_diffusers_does_not_define_are_read_from_their_components(components, family):
    assert detect_family(_index("StructuredDiffusionXLPipeline", **components)).name == family


@pytest.mark.parametrize(
    "index",
    [{"_class_name": "KandinskyV22Pipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
     {"_class_name": "MyPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
     {"_class_name": "HunyuanDiTPipeline"}],
)
def test_unsupported_pipelines_are_a_value_error_listing_the_families(index):
    with pytest.raises(ValueError, match=r"not a model family attnctl supports; supported families: sd \("):
        detect_family(index)


def test_folders_json_files_and_loaded_pipelines(tiny_sd_path, tmp_path):
    assert detect_family(tiny_sd_path).name == "sd"
    assert detect_family(tiny_sd_path / "model_index.json").name == "sd"
    with pytest.raises(ValueError, match="without model_index.json"):
        detect_family(tmp_path)
    index = json.loads((tiny_sd_path / "model_index.json").read_text())
    assert detect_family(index).name == "sd"


def test_capabilities_have_a_reason_wherever_they_do_not_apply():
    for family in FAMILIES.values():
        assert set(family.capabilities) <= set(CAPABILITIES)
        assert set(CAPABILITIES) - family.capabilities == set(family.not_applicable), family.name
    assert [f.name for f in families_supporting("freeswim")] == ["wan-t2v", "wan-i2v", "wan-vace"]
    with pytest.raises(ValueError, match=r"structured does not apply to Wan VACE .*supports the families sd, sdxl"):
        get_family("wan-vace").require("structured")
    with pytest.raises(ValueError, match="model family 'sd4' is not supported; supported families: sd, sdxl"):
        get_family("sd4")
    with pytest.raises(ValueError, match="capability='foo'"):
        get_family("sd").supports("foo")


def test_the_table_matches_the_pipelines_variants():
    from attnctl.pipelines.attend_excite import AttendExciteMethod
    from attnctl.pipelines.composer import ComposerMethod
    from attnctl.pipelines.regional import RegionalMethod
    from attnctl.pipelines.structured import StructuredMethod
    from attnctl.pipelines.syngen import SynGenMethod

    names = lambda capability: {f.name for f in families_supporting(capability)}  # noqa: E731
    assert names("regional") == set(RegionalMethod._variants)
    assert names("compose") == set(ComposerMethod._variants)
    assert names("structured") == set(StructuredMethod._variants)
    assert names("binding") == set(AttendExciteMethod._variants) == set(SynGenMethod._variants)
    assert names("attention_maps") >= set(StructuredMethod._variants)  # maps come with the structured variants
