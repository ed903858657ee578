"""The controlled WanAttention processor: exactly the stock WanAttnProcessor when no control acts."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from attnctl.core import AttentionControl, AttentionController, LayerInfo
from attnctl.freeswim import FreeSwimConfig, FreeSwimState, freeswim_controls
from attnctl.freeswim.wan_processor import ControlledWanAttnProcessor, wan_processor_factory
from attnctl.models.tiny_wan import build_tiny_wan_transformer

I2V = dict(image_dim=8, added_kv_proj_dim=24)


def inputs(image: bool, seed: int = 1, frames: int = 3, height: int = 8, width: int = 10):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, frames, height, width, generator=generator)
    timestep = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 512 if image else 7, 16, generator=generator)  # I2V splits off the last 512 tokens
    extra = {"encoder_hidden_states_image": torch.randn(2, 5, 8, generator=generator)} if image else {}
    return dict(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False, **extra)


def run(model, controls=(), **kwargs):
    with torch.no_grad(), AttentionController(controls).installed(model, processor_factory=wan_processor_factory(model)):
        return model(**kwargs)[0]


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
def test_no_control_reproduces_the_stock_transformer_bit_for_bit(image, fused):
    model = build_tiny_wan_transformer(**(I2V if image else {})).eval()
    if fused:
        model.fuse_qkv_projections()
    kwargs = inputs(image)
    with torch.no_grad():
        stock = model(**kwargs)[0]
    assert torch.equal(run(model, **kwargs), stock)


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_freeswim_with_a_covering_window_and_stock_scale_is_the_stock_transformer(image):
    model = build_tiny_wan_transformer(**(I2V if image else {})).eval()
    kwargs = inputs(image)
    with torch.no_grad():
        stock = model(**kwargs)[0]
    config = FreeSwimConfig(window=(9, 11), native_tokens=20, attention_scale=None, dual_path=False, allow_full=True)
    assert torch.equal(run(model, freeswim_controls(FreeSwimState(config)), **kwargs), stock)


def test_attention_backend_set_on_the_model_is_honoured():
    model = build_tiny_wan_transformer().eval()
    model.set_attention_backend("_native_math")
    kwargs = inputs(False)
    with torch.no_grad():
        stock = model(**kwargs)[0]
    with AttentionController().installed(model, processor_factory=wan_processor_factory(model)):
        assert all(p._attention_backend == "_native_math" for p in model.attn_processors.values())
        with torch.no_grad():
            assert torch.equal(model(**kwargs)[0], stock)


class Recorder(AttentionControl):
    def __init__(self):
        self.seen = []

    def applies_to(self, call):
        self.seen.append((call.branch, call.layer.name, call.grid, call.is_cross))
        return False


def test_grid_layers_and_branch_from_cache_context():
    model = build_tiny_wan_transformer().eval()
    recorder = Recorder()
    kwargs = inputs(False, frames=3, height=8, width=10)
    with torch.no_grad(), AttentionController([recorder]).installed(model, processor_factory=wan_processor_factory(model)):
        for branch in ("cond", "uncond"):
            with model.cache_context(branch, step_index=0):
                model(**kwargs)
    assert {(b, g, cross) for b, _, g, cross in recorder.seen} == {
        (branch, (3, 4, 5), cross) for branch in ("cond", "uncond") for cross in (False, True)
    }
    assert [name for _, name, _, _ in recorder.seen[:4]] == [
        "blocks.0.attn1.processor", "blocks.0.attn2.processor", "blocks.1.attn1.processor", "blocks.1.attn2.processor",
    ]


def test_token_order_is_frames_rows_columns_as_the_patch_embedding_flattens():
    """A latent that encodes its own (t, y, x) reaches the blocks in the order the processor's grid assumes."""
    model = build_tiny_wan_transformer().eval()
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
        model.patch_embedding.bias.zero_()
        model.patch_embedding.weight[0, 0, 0, 0, 0] = 1.0  # channel 0 of a token = top-left latent of its patch
    frames, height, width = 2, 6, 10
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    latents = torch.zeros(1, 4, frames, height, width)
    latents[0, 0] = (t * 10000 + (y // 2) * 100 + (x // 2)).float()
    captured = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0][0, :, 0].clone()))
    processor_grid = Recorder()
    with torch.no_grad(), AttentionController([processor_grid]).installed(
        model, processor_factory=wan_processor_factory(model)
    ):
        model(latents, torch.tensor([10.0]), torch.zeros(1, 3, 16), return_dict=False)
    grid = processor_grid.seen[0][2]
    assert grid == (2, 3, 5)
    tokens = torch.arange(grid[0])[:, None, None] * 10000 + torch.arange(grid[1])[:, None] * 100 + torch.arange(grid[2])
    assert torch.equal(captured[0], tokens.flatten().float())


def test_processors_are_restored_even_when_the_forward_raises():
    model = build_tiny_wan_transformer().eval()

    class Boom(AttentionControl):
        def cached_output(self, call):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(model, [Boom()], **inputs(False))
    assert all(type(p) is WanAttnProcessor for p in model.attn_processors.values())
    assert "attnctl_branch" not in model._diffusers_hook.hooks


def test_factory_rejects_other_attention_modules():
    factory = wan_processor_factory(build_tiny_wan_transformer())
    with pytest.raises(TypeError, match="not a WanAttention"):
        factory(AttentionController(), LayerInfo.from_name("proj.processor", False, 0), torch.nn.Linear(2, 2))
    assert ControlledWanAttnProcessor._attention_backend is None
