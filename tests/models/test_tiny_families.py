"""The tiny family pipelines: saved folders load as their stock diffusers class and run with each family's traits."""

from __future__ import annotations

import diffusers
import pytest
import torch

from attnctl.models.tiny_families import (
    TINY_FAMILIES,
    build_tiny_family_pipeline,
    save_tiny_family_pipeline,
    tiny_call_arguments,
)

FIXTURES = {
    "sdxl": "tiny_sdxl_path",
    "sd3": "tiny_sd3_path",
    "sd35": "tiny_sd35_path",
    "flux": "tiny_flux_path",
    "pixart": "tiny_pixart_path",
}


def run_tiny(pipe, family: str) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red cat on the left", **tiny_call_arguments(family)).images


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_saved_folder_loads_as_the_stock_class_and_reproduces_the_built_pipeline(family, request):
    path = request.getfixturevalue(FIXTURES[family])
    loaded = diffusers.DiffusionPipeline.from_pretrained(path)
    assert type(loaded).__name__ == TINY_FAMILIES[family][0]
    latents = run_tiny(loaded, family)
    assert torch.isfinite(latents).all()
    assert torch.equal(latents, run_tiny(build_tiny_family_pipeline(family), family))


def test_sd35_has_a_dual_attention_block_sharing_one_processor_and_rms_norms():
    transformer = build_tiny_family_pipeline("sd35").transformer
    first, last = transformer.transformer_blocks[0], transformer.transformer_blocks[-1]
    assert first.attn.processor is first.attn2.processor
    assert type(first.attn.norm_q).__name__ == "RMSNorm"
    assert last.context_pre_only and last.attn.to_add_out is None
    sd3 = build_tiny_family_pipeline("sd3").transformer
    assert sd3.transformer_blocks[0].attn2 is None and sd3.transformer_blocks[0].attn.norm_q is None


def test_flux_is_the_dev_variant_with_both_block_kinds():
    transformer = build_tiny_family_pipeline("flux").transformer
    assert transformer.config.guidance_embeds
    assert len(transformer.transformer_blocks) == 2 and len(transformer.single_transformer_blocks) == 2


def test_unknown_family_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="family must be one of .*'wan'"):
        save_tiny_family_pipeline("wan", tmp_path)


def test_call_arguments_name_the_family():
    assert tiny_call_arguments("pixart")["use_resolution_binning"] is False
    assert "max_sequence_length" not in tiny_call_arguments("sdxl")
    with pytest.raises(ValueError, match="family must be one of"):
        tiny_call_arguments("sd2")
