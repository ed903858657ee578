"""The --method registry: lazy imports, signature checks, field -> argument mapping, recorded parameters."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from attnctl.batch.fields import FIELDS
from attnctl.batch.methods import METHODS, Converter, MethodSpec, MethodUnavailable
from attnctl.checks import mask_array


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_reads_known_fields_and_matches_its_pipeline_once_installed(name):
    method = METHODS[name]
    assert method.fields <= set(FIELDS)
    try:
        cls = method.pipeline_class()
    except MethodUnavailable as err:  # a pipeline still being written: the message says what is missing
        assert f"--method {name} is not available" in str(err)
        return
    method.check_signature(cls)  # the method table and the installed pipeline agree


def test_missing_module_and_signature_drift_are_clear_errors():
    def no_such_module() -> type:
        from attnctl.pipelines import no_such_module  # noqa: F401 (the import is what fails)

    ghost = MethodSpec("ghost", "Ghost", no_such_module, "image", "")
    with pytest.raises(MethodUnavailable, match="--method ghost is not available .*no_such_module"):
        ghost.pipeline_class()

    class Narrow:
        def __call__(self, prompt, generator=None, **kwargs):
            pass

    with pytest.raises(MethodUnavailable, match=r"Narrow.__call__ has no argument .*num_inference_steps \(field 'steps'\)"):
        METHODS["plain"].check_signature(Narrow)


def test_call_kwargs_map_and_convert_fields(tmp_path):
    fields = {"prompt": "a", "steps": 3, "guidance": 2.0, "size": (96, 64), "phrases": ["a"], "seed": 4}
    assert METHODS["plain"].call_kwargs(fields) == {
        "prompt": "a", "num_inference_steps": 3, "guidance_scale": 2.0, "width": 96, "height": 64,
    }
    assert METHODS["structured"].call_kwargs(fields)["phrases"] == ["a"]
    PIL.Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "mask.png")  # 16-bit, nearly black
    loaded = Converter(("subject_mask",), METHODS["compose"].converters["subject_mask"].convert)(str(tmp_path / "mask.png"))
    assert loaded["subject_mask"].mode == "I;16"  # loaded as stored: the pipeline scales 16 bits, never clips
    assert not (mask_array("subject_mask", loaded["subject_mask"]) >= 0.5).any()
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="subject_mask=.*notes.txt' is invalid: expected an image file"):
        METHODS["compose"].call_kwargs({"prompt": "a", "subject_mask": str(tmp_path / "notes.txt")})


def test_cpu_offload_adds_the_methods_memory_saving_arguments():
    fields = {"prompt": "a", "cache_interval": 2}
    assert "cache_device" not in METHODS["freeswim"].call_kwargs(fields)
    assert METHODS["freeswim"].call_kwargs(fields, offload=True) == {
        "prompt": "a", "cache_interval": 2, "cache_device": "cpu",
    }
    assert METHODS["plain"].call_kwargs(fields, offload=True) == {"prompt": "a"}

    class NoCacheDevice:
        def __call__(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width, generator,
                     num_frames, strength, cache_interval, dual_path, native_width, native_height, video):
            pass

    with pytest.raises(MethodUnavailable, match=r"has no argument cache_device \(field '--cpu-offload'\)"):
        METHODS["freeswim"].check_signature(NoCacheDevice)


def test_parameters_are_job_fields_with_pipeline_defaults_filled_in():
    from diffusers import StableDiffusionPipeline

    fields = {"prompt": "a", "negative_prompt": "b", "seed": 1, "samples": 2, "steps": 3, "size": (64, 64)}
    assert METHODS["plain"].parameters(fields, StableDiffusionPipeline) == {
        "guidance": 7.5, "size": "64x64", "steps": 3,
    }
