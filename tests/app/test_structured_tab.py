"""The structured tab through gradio_client: same-seed stock/structured pair, heat maps, phrases, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attnctl.app.limits import Limits
from attnctl.app.models import ModelCache
from attnctl.app.tabs.structured import generate_binding
from gradio_client.exceptions import AppError
from PIL import Image

from attnctl import StructuredDiffusionPipeline
from attnctl.methods.attend_excite import SPEC as ATTEND_EXCITE
from attnctl.methods.structured import SPEC as STRUCTURED
from attnctl.structured import load_english_pipeline

PROMPT = "a red circle and a blue square"
PHRASES = "a red circle\na blue square"


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    return StructuredDiffusionPipeline.from_pretrained(tiny_sd_path)


def _generate(
    client, model, prompt=PROMPT, negative="", phrases=PHRASES, mode="values", seed=3, steps=2, guidance=7.5
):
    return client.predict(
        model, prompt, negative, phrases, mode, seed, steps, guidance, api_name="/structured"
    )


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_stock_and_structured_come_from_one_seed_with_heat_maps_per_token(client, tiny_sd_path, pipe):
    stock, structured, stock_maps, structured_maps, phrases, details = _generate(client, str(tiny_sd_path))
    for mode, path in ((None, stock), ("values", structured)):
        direct = pipe(
            PROMPT,
            phrases=PHRASES.splitlines(),
            struct_mode=mode,
            return_attention_maps=True,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(3),
        )
        assert np.array_equal(_pixels(path), np.asarray(direct.images[0]))
    assert not np.array_equal(_pixels(stock), _pixels(structured))

    assert phrases == PHRASES
    assert details["phrases"] == [
        {"text": "a red circle", "tokens": [0, 3]},
        {"text": "a blue square", "tokens": [4, 7]},
    ]
    assert details["tokens"] == ["a", "red", "circle", "and", "a", "blue", "square"]
    for gallery in (stock_maps, structured_maps):
        assert [item["caption"] for item in gallery] == [
            "a",
            "red",
            "circle",
            "and",
            "a (2)",
            "blue",
            "square",
        ]
        assert all(_pixels(item["image"]).shape == _pixels(stock).shape for item in gallery)


def test_parse_fills_the_phrases_box(client, tiny_sd_path, pipe):
    try:
        load_english_pipeline()
    except RuntimeError as err:
        pytest.skip(str(err))
    expected = "\n".join(p.text for p in pipe.parse_phrases(PROMPT))
    assert client.predict(str(tiny_sd_path), PROMPT, api_name="/parse_phrases") == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "  "}, "Prompt is empty: type some text."),
        ({"phrases": "a green dog"}, "phrase 'a green dog' does not occur in the prompt"),
        ({"seed": -1}, "Seed=-1 is invalid: expected a whole number from 0 to 9223372036854775807"),
        ({"steps": 2.5}, "Steps=2.5 is invalid: expected a whole number from 1 to 10000"),
        (
            {"mode": "both"},
            "is not in the list of choices: ['values', 'keys']",
        ),  # Gradio's own check of the radio
        ({"model": "/no/such/model"}, "Model '/no/such/model': no such folder"),
    ],
)
def test_bad_input_is_a_message_not_a_stack_trace(client, tiny_sd_path, changes, message):
    arguments = {"model": str(tiny_sd_path), **changes}
    with pytest.raises(AppError) as caught:
        _generate(client, **arguments)
    assert message in str(caught.value)
    assert "Traceback" not in str(caught.value)


@pytest.mark.skipif(load_english_pipeline() is None, reason="no English spaCy pipeline installed")
def test_binding_methods_come_from_the_same_seed_with_heat_maps(client, tiny_sd_path):
    from attnctl import AttendAndExcitePipeline

    excite, syngen, excite_maps, syngen_maps, details = client.predict(
        str(tiny_sd_path), PROMPT, "", 3, 2, 7.5, api_name="/binding"
    )
    direct = AttendAndExcitePipeline.from_pretrained(tiny_sd_path)(
        PROMPT, max_iter_to_alter=1, num_inference_steps=2, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(3),
    )
    assert np.array_equal(_pixels(excite), np.asarray(direct.images[0]))
    assert details["subjects"] == [["circle"], ["square"]]
    assert details["modifier_sets"] == [{"noun": "circle", "modifiers": ["red"]},
                                        {"noun": "square", "modifiers": ["blue"]}]
    for gallery in (excite_maps, syngen_maps):
        assert [item["caption"] for item in gallery] == ["a", "red", "circle", "and", "a (2)", "blue", "square"]


def test_binding_and_structured_on_sdxl_and_the_family_variant_from_a_loaded_sibling(tiny_sdxl_path, tiny_pixart_path):
    """The tab's functions on families other than SD: SDXL runs both binding methods with subjects read at the
    right key positions; a method loaded from a cached sibling is the family's variant (from_pipe does not pick
    it), and the native size is read from a transformer too."""
    models = ModelCache(limits=Limits())
    *images, details = generate_binding(models, str(tiny_sdxl_path), "a red circle and a blue square", "", 0, 2, 4.0,
                                        progress=lambda *args, **kwargs: None)
    assert details["subjects"] == [["circle"], ["square"]]
    assert "Stable Diffusion XL" in details["model"]
    pixart = str(tiny_pixart_path)
    assert type(models.image_pipeline(pixart, STRUCTURED)).__name__ == "StructuredPixArtSigmaPipeline"
    assert type(models.get(pixart, ATTEND_EXCITE)).__name__ == "AttendAndExcitePixArtSigmaPipeline"
