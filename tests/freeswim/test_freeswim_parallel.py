"""FreeSwim under diffusers' own context parallelism (Ulysses), two gloo processes on CPU vs one process.

diffusers 0.42.1 builds the parallel device as ``rank % torch.accelerator.device_count()``, which divides by zero
on a machine without an accelerator (``ZeroDivisionError: integer modulo by zero`` in
``ModelMixin._resolve_parallel_config``); the workers report one accelerator so that it picks ``cpu:0``, and
everything after it (the gloo device mesh, the sequence split, the all-to-all) is diffusers' own code.
"""

from __future__ import annotations

import os
import socket
import types

import pytest
import torch

from attnctl.core import AttentionController
from attnctl.freeswim import FreeSwimConfig, FreeSwimState, freeswim_controls
from attnctl.freeswim.wan_processor import wan_processor_factory
from attnctl.models.tiny_wan import build_tiny_wan_transformer

CALL = dict(prompt="a cat walking", negative_prompt="blurry", height=64, width=64, native_height=32,
            native_width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16, output_type="latent",
            window_size=(3, 3), cache_interval=2)


def run_freeswim(folder: str, seed: int = 0) -> torch.Tensor:
    from attnctl import FreeSwimPipeline

    pipe = FreeSwimPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**CALL, generator=torch.Generator().manual_seed(seed))
    assert pipe.freeswim_states["transformer"].full_branch_runs  # the window and dual path really ran
    return out.frames


def _worker(rank: int, world: int, port: int, folder: str, result: str) -> None:
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # diffusers 0.42.1 divides by it; see the module docstring
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from attnctl import FreeSwimPipeline

        original = FreeSwimPipeline.from_pretrained.__func__

        def parallel_from_pretrained(cls, path, **kwargs):
            pipe = original(cls, path, **kwargs)
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            return pipe

        FreeSwimPipeline.from_pretrained = classmethod(parallel_from_pretrained)
        frames = run_freeswim(folder)
        if rank == 0:
            torch.save(frames, result)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_with_ulysses_equal_one_process(tiny_wan_path, tmp_path):
    import torch.multiprocessing as mp

    result = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, free_port(), str(tiny_wan_path), str(result)), nprocs=2, join=True)
    parallel = torch.load(result)
    single = run_freeswim(str(tiny_wan_path))
    assert torch.equal(parallel, single)


def test_ring_attention_is_refused_when_a_control_acts():
    """Under ring attention a rank holds half the tokens (6 of a 2 x 2 x 3 grid) and only part of the keys."""
    model = build_tiny_wan_transformer()
    state = FreeSwimState(FreeSwimConfig(window=(1, 1), native_tokens=4, dual_path=False))
    ring = types.SimpleNamespace(context_parallel_config=types.SimpleNamespace(ring_degree=2, ulysses_degree=1))
    controller = AttentionController(freeswim_controls(state))
    with controller.installed(model, processor_factory=wan_processor_factory(model)):
        attn = model.blocks[0].attn1
        attn.processor._parallel_config = ring
        controller.on_model_forward(torch.zeros(1, 4, 2, 4, 6), 999, image_grid=(2, 2, 3))  # the whole latent
        with pytest.raises(ValueError, match=r"use ContextParallelConfig\(ulysses_degree=...\) with ring_degree=1"):
            attn.processor(attn, torch.randn(1, 6, 24))
