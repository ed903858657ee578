"""Property tests (hypothesis): any value of any checked pipeline argument either passes the checks or raises a
ValueError naming the argument, never another exception type; values that pass run to a finite result."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from attnctl.checks import PIPELINE_ARGUMENTS, SIDES, check_call

#: Anything a hostile caller might pass: numbers of every kind (NaN, inf, huge), strings, lists, nesting.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["values", "keys", "same", "cross", "entropy", "pil", "np", "a red car", ""]),
)
HOSTILE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner), max_leaves=12)
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pipelines(tiny_sd_path, tiny_wan_path):
    from attnctl.pipelines.attend_excite import AttendAndExcitePipeline
    from attnctl.pipelines.composer import PrimeComposerPipeline
    from attnctl.pipelines.freeswim import FreeSwimPipeline
    from attnctl.pipelines.regional import RegionalDiffusionPipeline
    from attnctl.pipelines.structured import StructuredDiffusionPipeline
    from attnctl.pipelines.syngen import SynGenPipeline

    loaded = {cls.__name__: cls.from_pretrained(tiny_sd_path) for cls in
              (StructuredDiffusionPipeline, RegionalDiffusionPipeline, PrimeComposerPipeline,
               AttendAndExcitePipeline, SynGenPipeline)}
    loaded["FreeSwimPipeline"] = FreeSwimPipeline.from_pretrained(tiny_wan_path)
    for pipe in loaded.values():
        pipe.set_progress_bar_config(disable=True)
    return loaded


def _defaults(pipe) -> dict:
    parameters = inspect.signature(type(pipe).__call__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


CHECKED = [
    (pipeline, name)
    for pipeline in ("StructuredDiffusionPipeline", "RegionalDiffusionPipeline", "PrimeComposerPipeline",
                     "FreeSwimPipeline", "AttendAndExcitePipeline", "SynGenPipeline")
    for name in (*PIPELINE_ARGUMENTS, *SIDES, "video")
]


@pytest.mark.parametrize(("pipeline", "name"), CHECKED)
@QUICK
@given(value=HOSTILE)
def test_any_value_passes_or_raises_a_value_error_naming_the_argument(pipelines, pipeline, name, value):
    pipe = pipelines[pipeline]
    arguments = _defaults(pipe)
    if name not in arguments:
        return  # this pipeline has no such argument
    arguments[name] = value
    try:
        check_call(pipe, arguments)
    except ValueError as err:
        assert f"{name}=" in str(err) or f"{name}[" in str(err), (name, value, str(err))


FINITE_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 200))


@pytest.mark.parametrize("name", ["guidance_scale", "guidance_rescale", "eta"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=FINITE_NUMBERS)
def test_structured_runs_every_value_it_accepts_to_a_finite_image(pipelines, name, value):
    pipe = pipelines["StructuredDiffusionPipeline"]
    kwargs = dict(prompt="a red car", num_inference_steps=1, output_type="np", phrases=["a red car"],
                  generator=torch.Generator().manual_seed(0), height=32, width=32)
    try:
        images = pipe(**kwargs, **{name: value}).images
    except ValueError as err:
        assert f"{name}=" in str(err)
    else:
        assert np.isfinite(images).all() and math.isfinite(value)


@pytest.mark.parametrize("name", ["attention_scale", "cache_interval", "strength"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=FINITE_NUMBERS)
@example(value=100.0)
@example(value=5.47830089106676e37)  # once found by this test: a finite scale that overflowed to NaN frames
def test_freeswim_runs_every_value_it_accepts_to_finite_frames(pipelines, name, value):
    pipe = pipelines["FreeSwimPipeline"]
    kwargs = dict(prompt="a cat", height=32, width=32, native_height=16, native_width=32, num_frames=1,
                  num_inference_steps=2, max_sequence_length=8, generator=torch.Generator().manual_seed(0))
    try:
        frames = pipe(**kwargs, **{name: value}).frames
    except ValueError as err:
        assert f"{name}=" in str(err)
    else:
        assert np.isfinite(frames).all()


class ModelCalled(Exception):
    """Raised by a hook on every model of the pipeline: the arguments passed every check."""


#: Native sizes around Wan's 16-pixel token: single-token grids, targets smaller than native, hostile values.
NATIVE_SIDES = st.one_of(st.sampled_from([16, 32, 48, 64, 80]), st.integers(-32, 96), HOSTILE)


@QUICK
@given(native_height=NATIVE_SIDES, native_width=NATIVE_SIDES)
@example(native_height=16, native_width=16)  # one native token: once a deep error naming neither
@example(native_height=32.0, native_width=48)  # a whole float counts as a whole number
def test_freeswim_native_sizes_pass_or_are_refused_by_name_before_any_model_runs(pipelines, native_height,
                                                                                 native_width):
    pipe = pipelines["FreeSwimPipeline"]
    models = [pipe.text_encoder, pipe.transformer, pipe.vae]

    def refuse(*args):
        raise ModelCalled

    hooks = [model.register_forward_pre_hook(refuse) for model in models]
    try:
        pipe(prompt="a cat", height=64, width=64, native_height=native_height, native_width=native_width,
             num_frames=1, num_inference_steps=2, max_sequence_length=8)
    except ValueError as err:
        assert "native_height=" in str(err) or "native_width=" in str(err), (native_height, native_width, str(err))
    except ModelCalled:  # accepted: every check passed and FreeSwim's settings were built from the sizes
        assert all(not isinstance(side, bool) and side == int(side) and side % 16 == 0 and 16 <= side <= 64
                   for side in (native_height, native_width)) and native_height * native_width > 16 * 16
    finally:
        for hook in hooks:
            hook.remove()
