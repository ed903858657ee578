"""FreeSwim's settings: the window from the native size, the entropy-aware scale, validation."""

from __future__ import annotations

import math

import pytest
import torch

from attnctl.freeswim import FreeSwimConfig, FreeSwimState, entropy_scale, native_window


def test_native_window_is_odd_and_covers_the_native_grid():
    assert native_window((30, 52)) == (31, 53)  # 480 x 832: the released code's 15 and 26 half-sizes
    assert native_window((45, 80)) == (45, 81)  # 720 x 1280
    config = FreeSwimConfig.from_native_size(480, 832)
    assert config.window == (31, 53) and config.native_tokens == 1560


def test_entropy_scale_matches_the_released_value():
    assert entropy_scale(1560, 128) == pytest.approx(0.09246, abs=1e-5)
    assert entropy_scale(1560, 128) / 128**-0.5 == pytest.approx(1.0461, abs=1e-4)
    config = FreeSwimConfig(window=(3, 3), native_tokens=1560)
    assert config.softmax_scale(128) == entropy_scale(1560, 128)
    assert FreeSwimConfig(window=(3, 3), native_tokens=9, attention_scale=None).softmax_scale(64) is None
    assert FreeSwimConfig(window=(3, 3), native_tokens=9, attention_scale=0.2).softmax_scale(64) == 0.2
    assert math.isclose(entropy_scale(2, 1), math.sqrt(math.log(4) / math.log(2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window=(3,)), r"window=\(3,\) is invalid: expected two values \(rows, cols\)"),
        (dict(window=(0, 3)), r"window\[0\]=0 is invalid"),
        (dict(cache_interval=0), "cache_interval=0 is invalid: expected a whole number from 1 to 10000"),
        (dict(cache_interval=True), "cache_interval=True is invalid"),
        (dict(cache_interval=10_001), "cache_interval=10001 is invalid"),
        (dict(attention_scale=-1.0), "attention_scale=-1.0 is invalid"),
        (dict(attention_scale=float("inf")), "attention_scale=inf is invalid"),
        (dict(backend="gpu"), "backend='gpu' must be None or one of"),
        (dict(native_tokens=1), "native_tokens=1 must be at least 2"),
        (dict(cache_device="gpu0"), "cache_device='gpu0' is not a torch device"),
    ],
)
def test_bad_settings_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FreeSwimConfig(**(dict(window=(3, 3), native_tokens=9) | kwargs))


def test_cache_device_is_kept_as_a_device_string():
    assert FreeSwimConfig(window=(3, 3), native_tokens=9).cache_device is None
    assert FreeSwimConfig(window=(3, 3), native_tokens=9, cache_device=torch.device("cpu")).cache_device == "cpu"
    assert FreeSwimConfig(window=(3, 3), native_tokens=9, cache_device="cuda:1").cache_device == "cuda:1"


def test_native_size_must_be_whole_tokens():
    with pytest.raises(ValueError, match="native_height=470 must be a positive multiple of 16"):
        FreeSwimConfig.from_native_size(470, 832)


def test_window_larger_than_the_grid_is_an_error_unless_full_attention_is_allowed():
    grid = (2, 3, 4)
    with pytest.raises(ValueError, match=r"window\[1\]=5 is larger than grid\[1\]=3"):
        FreeSwimState(FreeSwimConfig(window=(5, 3), native_tokens=9)).window_for(grid)
    assert FreeSwimState(FreeSwimConfig(window=(5, 3), native_tokens=9, allow_full=True)).window_for(grid) == (2, 3, 3)
    native = FreeSwimConfig.from_native_size(48, 64)  # grid 3 x 4 -> window 3 x 5, one wider than the native grid
    assert native.allow_full and FreeSwimState(native).window_for((2, 3, 4)) == (2, 3, 4)
    assert not FreeSwimConfig.from_native_size(48, 64, allow_full=False).allow_full
    chosen = FreeSwimConfig.from_native_size(48, 64, window=(3, 3))  # a chosen window must fit: no fallback
    assert chosen.window == (3, 3) and chosen.native_tokens == 12 and not chosen.allow_full
