"""The cross-attention cache in the pipeline: interval 1 is the uncached method; interval k refreshes every k."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from attnctl.pipelines.freeswim import RELEASE_FLOW_SHIFT, upscale_video
from diffusers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from attnctl.core import AttentionController
from attnctl.freeswim import (
    CACHED,
    DUAL,
    DUAL_ROWS,
    WINDOW,
    FreeSwimConfig,
    FreeSwimState,
    freeswim_controls,
    native_window,
)
from attnctl.freeswim.wan_processor import wan_processor_factory

PROMPT, NEGATIVE, TEXT_TOKENS, GUIDANCE = "a cat walking", "blurry", 16, 4.0
TARGET, NATIVE = 96, 48


def user_video(frames=5, size=NATIVE):
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (frames, size, size, 3), generator=generator, dtype=torch.uint8)
    return [PIL.Image.fromarray(frame.numpy()) for frame in pixels]


def refine(pipe, steps, strength=1.0, seed=0, **kwargs):
    return pipe(
        PROMPT, NEGATIVE, height=TARGET, width=TARGET, native_height=NATIVE, native_width=NATIVE,
        video=user_video(), num_inference_steps=steps, strength=strength, guidance_scale=GUIDANCE,
        max_sequence_length=TEXT_TOKENS, generator=torch.Generator().manual_seed(seed), output_type="latent",
        **kwargs,
    ).frames


@torch.no_grad()
def uncached_reference(pipe, steps, seed=0):
    """FreeSwim without a cache, written out: every conditional pass dual, every unconditional pass windowed."""
    model = pipe.transformer
    prompt_embeds, negative_embeds = pipe.encode_prompt(PROMPT, NEGATIVE, max_sequence_length=TEXT_TOKENS)
    video = upscale_video(pipe.video_processor.preprocess_video(user_video()).float(), TARGET, TARGET)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    clean = (pipe.vae.encode(video).latent_dist.mode() - mean) / std
    scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=RELEASE_FLOW_SHIFT)
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    timesteps = scheduler.timesteps
    noise = randn_tensor(clean.shape, generator=torch.Generator().manual_seed(seed))
    latents = scheduler.add_noise(clean, noise, timesteps[:1])
    grid = (NATIVE // 16, NATIVE // 16)
    config = FreeSwimConfig(
        window=native_window(grid), native_tokens=grid[0] * grid[1], cache_interval=1, allow_full=True
    )
    state = FreeSwimState(config)
    controller = AttentionController(freeswim_controls(state))
    with controller.installed(model, processor_factory=wan_processor_factory(model)):
        for step, t in enumerate(timesteps):
            assert state.begin_pass(step, "cond") == DUAL
            with controller.declared(rows=DUAL_ROWS), model.cache_context("cond"):
                cond = model(torch.cat([latents, latents]), t.expand(2), torch.cat([prompt_embeds] * 2),
                             return_dict=False)[0][:1]
            assert state.begin_pass(step, "uncond") == WINDOW
            with model.cache_context("uncond"):
                uncond = model(latents, t.expand(1), negative_embeds, return_dict=False)[0]
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents, return_dict=False)[0]
    return latents


def test_interval_one_equals_the_uncached_method_exactly(pipe):
    cached_path = refine(pipe, steps=4, cache_interval=1)
    assert not pipe.freeswim_states["transformer"].cache  # interval 1 never reads, so nothing is stored
    assert torch.equal(cached_path, uncached_reference(pipe, steps=4))


@pytest.mark.parametrize("interval", [2, 3])
def test_full_branch_runs_exactly_on_steps_0_k_2k_of_the_conditional_pass(pipe, interval):
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: batches.append(
        kwargs["hidden_states"].shape[0]), with_kwargs=True)
    steps = 7
    refine(pipe, steps=steps, cache_interval=interval)
    hook.remove()
    runs = pipe.freeswim_states["transformer"].full_branch_runs
    guide_steps = list(range(0, steps, interval))
    assert sorted({step for step, _, _ in runs}) == guide_steps
    assert {branch for _, branch, _ in runs} == {"cond"}
    assert len(runs) == len(guide_steps) * len(pipe.transformer.blocks)  # each self-attention layer once
    assert batches.count(2) == len(guide_steps) and len(batches) == 2 * steps  # dual passes stack 2 rows


def test_longer_interval_reuses_the_cache_and_changes_the_result(pipe):
    every_step, every_second = refine(pipe, steps=4, cache_interval=1), refine(pipe, steps=4, cache_interval=2)
    state = pipe.freeswim_states["transformer"]
    assert set(state.cache) == {("cond", f"blocks.{i}.attn2.processor") for i in range(2)}
    assert (every_step - every_second).abs().max() > 1e-6


def test_guided_unconditional_pass_keeps_its_own_cache(pipe):
    refine(pipe, steps=4, cache_interval=2, guide_uncond=True)
    state = pipe.freeswim_states["transformer"]
    assert {branch for branch, _ in state.cache} == {"cond", "uncond"}
    assert sorted({(step, branch) for step, branch, _ in state.full_branch_runs}) == [
        (0, "cond"), (0, "uncond"), (2, "cond"), (2, "uncond"),
    ]


@pytest.mark.parametrize("cache_device", [None, "cpu"])
def test_cached_passes_replay_the_full_rows_of_the_last_dual_pass(pipe, cache_device):
    """Interval 2 over 5 steps: dual on 0, 2, 4; steps 1 and 3 return exactly what the dual pass before gave the full
    rows, and a refresh writes into the same buffers (no new allocation)."""
    layer = pipe.transformer.blocks[0].attn2
    key = ("cond", "blocks.0.attn2.processor")
    passes, buffers = [], []

    def record(module, args, output):
        state = pipe.freeswim_states["transformer"]
        if state.branch == "cond":
            passes.append((state.step, state.mode, output.clone()))
            if state.mode == DUAL:
                buffers.append(state.cache[key].data_ptr())

    hook = layer.register_forward_hook(record)
    refine(pipe, steps=5, cache_interval=2, cache_device=cache_device)
    hook.remove()
    assert [(step, mode) for step, mode, _ in passes] == [
        (0, DUAL), (1, CACHED), (2, DUAL), (3, CACHED), (4, DUAL),
    ]
    for (_, _, dual), (_, _, cached) in ((passes[0], passes[1]), (passes[2], passes[3])):
        assert torch.equal(cached, dual[1:])  # the full rows, replayed bit for bit
    assert not torch.equal(passes[1][2], passes[3][2])  # and refreshed in between
    assert len(set(buffers)) == 1
    state = pipe.freeswim_states["transformer"]
    assert state.cache_nbytes == sum(t.numel() * t.element_size() for t in state.cache.values()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading the cache from a GPU needs a GPU")
def test_cache_offloaded_to_pinned_host_memory_gives_the_same_video(pipe):
    pipe.to("cuda")
    beside = refine(pipe, steps=4, cache_interval=2)
    offloaded = refine(pipe, steps=4, cache_interval=2, cache_device="cpu")
    state = pipe.freeswim_states["transformer"]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in state.cache.values())
    assert torch.equal(beside, offloaded)
