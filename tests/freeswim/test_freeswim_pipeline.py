"""FreeSwimPipeline end to end on a tiny Wan built from configs: both stages, v2v, export, Wan 2.2's two transformers.

The pipeline contract (stage 1 is the stock pipeline, save/load, callbacks, offload, batches, bad arguments) runs
for every Wan variant in tests/pipelines/test_freeswim_contract.py."""

from __future__ import annotations

import imageio
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from diffusers.utils import export_to_video

import attnctl.core.window_cpu as window_cpu
from attnctl import FreeSwimPipeline, FreeSwimPipelineOutput
from attnctl.models.tiny_wan import build_tiny_wan_components, build_tiny_wan_transformer

SMALL = dict(
    prompt="a cat walking on the beach",
    negative_prompt="blurry",
    height=96,
    width=112,
    native_height=48,
    native_width=64,
    num_frames=5,
    num_inference_steps=3,
    max_sequence_length=16,
)


def generate(pipe, seed=0, **overrides):
    return pipe(**(SMALL | {"generator": torch.Generator().manual_seed(seed)} | overrides))


def stock_processors(model) -> bool:
    return all(type(p) is WanAttnProcessor for p in model.attn_processors.values())


def test_text_to_video_runs_both_stages(pipe):
    out = generate(pipe)
    assert isinstance(out, FreeSwimPipelineOutput)
    assert out.frames.shape == (1, 5, 96, 112, 3) and out.native_frames.shape == (1, 5, 48, 64, 3)
    assert np.isfinite(out.frames).all() and 0 <= out.frames.min() and out.frames.max() <= 1
    state = pipe.freeswim_states["transformer"]
    assert state.config.window == (3, 5)  # native grid 3 x 4 tokens -> odd window 3 x 5, target grid 6 x 7
    assert state.full_branch_runs  # the dual path ran
    assert stock_processors(pipe.transformer)


def test_video_to_video_upscales_a_user_video_and_exports_mp4(pipe, tmp_path):
    frames = [PIL.Image.new("RGB", (64, 48), (40 * i, 90, 200 - 30 * i)) for i in range(5)]
    out = generate(pipe, video=frames, strength=0.6, output_type="pil")
    assert out.native_frames is None
    assert len(out.frames[0]) == 5 and out.frames[0][0].size == (112, 96)
    path = export_to_video(out.frames[0], str(tmp_path / "upscaled.mp4"), fps=8)
    with imageio.get_reader(path, format="FFMPEG") as reader:
        decoded = [frame.shape for frame in reader]
    assert decoded == [(96, 112, 3)] * 5


def test_target_at_the_native_size_runs_with_the_odd_native_window_as_full_attention(pipe):
    out = generate(pipe, height=48, width=64)  # grid 3 x 4, window 3 x 5: full attention along the columns
    assert out.frames.shape == (1, 5, 48, 64, 3) and np.isfinite(out.frames).all()
    assert pipe.freeswim_states["transformer"].config.allow_full


def test_return_tuple_and_latent_output(pipe):
    frames, native = generate(pipe, output_type="latent", return_dict=False)
    assert frames.shape == (1, 4, 2, 12, 14)  # latent channels, (5 - 1) / 4 + 1 frames, 96 / 8 x 112 / 8
    assert native.shape == (1, 5, 3, 48, 64)  # stage 1 as "pt" frames


def test_several_prompts_and_videos_per_prompt_stack_their_rows(pipe):
    out = generate(pipe, prompt=["a cat walking", "a dog running"], negative_prompt=["blurry", "dark"],
                   num_videos_per_prompt=2, output_type="latent", cache_interval=2, num_inference_steps=4)
    assert out.frames.shape[0] == 4 and out.native_frames.shape[0] == 4
    cached = pipe.freeswim_states["transformer"].cache
    assert cached and all(tensor.shape[0] == 4 for tensor in cached.values())


def test_dual_path_off_is_plain_window_attention(pipe):
    generate(pipe, dual_path=False, cache_interval=2)
    state = pipe.freeswim_states["transformer"]
    assert state.full_branch_runs == [] and state.cache == {}


def test_wan22_gives_each_transformer_its_own_processors_and_cache():
    components = build_tiny_wan_components(seed=0)
    pipe = FreeSwimPipeline(**components, transformer_2=build_tiny_wan_transformer(seed=1), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    seen = {"transformer": set(), "transformer_2": set()}
    for name in seen:
        model = getattr(pipe, name)
        model.register_forward_pre_hook(lambda module, args, kwargs, name=name: seen[name].add(
            type(next(iter(module.attn_processors.values()))).__name__), with_kwargs=True)
    # the scheduler's own shift (3.0): with the release's 9.0 all 6 timesteps stay above the 0.5 boundary
    generate(pipe, num_inference_steps=6, strength=1.0, cache_interval=2, refine_flow_shift=None)
    assert seen == {"transformer": {"WanAttnProcessor", "ControlledWanAttnProcessor"},
                    "transformer_2": {"WanAttnProcessor", "ControlledWanAttnProcessor"}}
    steps = {name: sorted({s for s, _, _ in state.full_branch_runs}) for name, state in pipe.freeswim_states.items()}
    assert steps["transformer"] and steps["transformer_2"]
    assert min(steps["transformer_2"]) > max(steps["transformer"])  # high noise first, then low noise
    assert stock_processors(pipe.transformer) and stock_processors(pipe.transformer_2)


def test_whole_floats_run_as_the_integers_they_are(pipe):
    """Web forms send 64.0: every size and count accepts a whole float, with the integer's result."""
    floats = dict(height=96.0, width=112.0, native_height=48.0, native_width=64.0, num_frames=5.0,
                  num_inference_steps=3.0, cache_interval=2.0, num_videos_per_prompt=1.0)
    integers = {name: int(value) for name, value in floats.items()}
    assert torch.equal(generate(pipe, output_type="latent", **floats).frames,
                       generate(pipe, output_type="latent", **integers).frames)


@pytest.mark.skipif(window_cpu.cpu_kernel_error() is not None, reason="no fused CPU window kernel here")
def test_stage_two_on_the_fused_cpu_kernel_matches_the_tiled_kernel(pipe, monkeypatch):
    """FreeSwim's window branch through the fused kernel (its default for real video windows on CPU): Wan's
    strided (batch, heads, tokens, dim) views and the entropy scale reach it, and the video is the tiled one's."""
    import attnctl.core.window_attention as module

    tiled = generate(pipe, output_type="latent").frames
    calls = []
    fused = module.cpu_window_attention
    monkeypatch.setattr(module, "MIN_EFFICIENCY", 0.0)  # the tiny model's 5-column window fills 5 of 16 lanes
    monkeypatch.setattr(module, "cpu_window_attention", lambda *args: calls.append(args[3]) or fused(*args))
    out = generate(pipe, output_type="latent").frames
    assert calls and set(calls) == {(2, 6, 7)}  # every window call of stage 2, on its (frames, rows, columns) grid
    assert not torch.equal(out, tiled)  # another kernel ran (another summation order)
    torch.testing.assert_close(out, tiled, atol=1e-4, rtol=0)
