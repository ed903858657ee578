"""The shared gradient-guidance machinery: map operations, step sizes, map capture and one latent update."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from toy_guide import toy_guide

from attnctl.core import AttentionController
from attnctl.guidance import (
    GradientMaps,
    GuidanceSchedule,
    LatentGuide,
    decaying_step_sizes,
    default_resolution,
    gaussian_kernel,
    smooth,
    token_softmax,
)


def test_release_kernel_values():
    kernel = gaussian_kernel(3, 0.5)
    assert torch.allclose(kernel.sum(), torch.tensor(1.0))
    assert kernel[1, 1].item() == pytest.approx(0.331911, abs=1e-6)
    assert kernel[0, 1].item() == pytest.approx(0.122103, abs=1e-6)
    assert kernel[0, 0].item() == pytest.approx(0.044919, abs=1e-6)
    # a true Gaussian of standard deviation sigma * sqrt(2)
    d = torch.tensor([-1.0, 0.0, 1.0])
    axis = torch.exp(-(d**2) / (2 * (0.5 * math.sqrt(2)) ** 2))
    assert torch.allclose(kernel, torch.outer(axis, axis) / torch.outer(axis, axis).sum(), atol=1e-7)
    with pytest.raises(ValueError, match="kernel_size=4"):
        gaussian_kernel(4)


def test_smooth_keeps_constants_and_matches_a_literal_convolution():
    assert torch.allclose(smooth(torch.full((2, 5, 5), 0.3), gaussian_kernel()), torch.full((2, 5, 5), 0.3))
    maps = torch.rand(4, 4)
    kernel = gaussian_kernel()
    padded = torch.nn.functional.pad(maps[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
    literal = torch.stack([
        torch.stack([(padded[i : i + 3, j : j + 3] * kernel).sum() for j in range(4)]) for i in range(4)
    ])
    assert torch.allclose(smooth(maps, kernel), literal, atol=1e-6)


def test_token_softmax_renormalises_without_start_and_last_column():
    maps = torch.rand(2, 6, 3, 3, generator=torch.Generator().manual_seed(0)) / 10
    out = token_softmax(maps)
    assert torch.equal(out[:, 0], torch.zeros(2, 3, 3)) and torch.equal(out[:, -1], torch.zeros(2, 3, 3))
    assert torch.allclose(out[:, 1:-1].sum(1), torch.ones(2, 3, 3))
    literal = torch.exp(100 * maps[0, 2, 1, 1]) / torch.exp(100 * maps[0, 1:5, 1, 1]).sum()
    assert out[0, 2, 1, 1].item() == pytest.approx(literal.item(), rel=1e-5)
    t5 = token_softmax(maps, first=0, end=4)  # no start token; keys 4.. are masked padding
    assert torch.equal(t5[:, 4:], torch.zeros(2, 2, 3, 3)) and torch.allclose(t5[:, :4].sum(1), torch.ones(2, 3, 3))
    assert t5[0, 0, 1, 1].item() == pytest.approx(
        (torch.exp(100 * maps[0, 0, 1, 1]) / torch.exp(100 * maps[0, :4, 1, 1]).sum()).item(), rel=1e-5)


def test_decaying_step_sizes_as_the_release_computes_them():
    alphas = decaying_step_sizes(51, 20)
    assert alphas[0] == pytest.approx(20) and alphas[50] == pytest.approx(14.142, abs=1e-3)
    assert alphas[10] == pytest.approx(18.974, abs=1e-3) and alphas[24] == pytest.approx(17.436, abs=1e-3)


def test_default_resolution():
    assert default_resolution((64, 64)) == (16, 16)  # SD at 512 px: the paper's grid
    assert default_resolution((96, 96)) == (24, 24)  # SD 2.x at 768 px
    assert default_resolution((128, 96)) == (32, 24)  # SDXL, non-square
    assert default_resolution((16, 16)) == (16, 16) and default_resolution((8, 12)) == (8, 12)


def test_schedule_off_and_acts_at():
    assert GuidanceSchedule(decaying_step_sizes(5, 20), update_steps=0).off
    assert GuidanceSchedule(decaying_step_sizes(5, 0), update_steps=3, targets={0: 0.1}).off
    schedule = GuidanceSchedule(decaying_step_sizes(5, 20), update_steps=2, targets={3: 0.1})
    assert [schedule.acts_at(i) for i in range(5)] == [True, True, False, True, False]
    with pytest.raises(ValueError, match="update_steps=-1"):
        GuidanceSchedule((1.0,), update_steps=-1)


@pytest.fixture(scope="module")
def unet(tiny_sd_path):
    return StableDiffusionPipeline.from_pretrained(tiny_sd_path).unet


def _literal_maps(unet, latents, timestep, context, grid):
    """Reference: probabilities recomputed by hand from each read layer's inputs, stock processors running."""
    probs = []

    def hook(module, args, kwargs):
        hidden, states = args[0], kwargs["encoder_hidden_states"]
        if hidden.shape[1] != grid[0] * grid[1]:
            return
        query = module.to_q(hidden).unflatten(-1, (module.heads, -1)).transpose(1, 2)
        key = module.to_k(states).unflatten(-1, (module.heads, -1)).transpose(1, 2)
        probs.append((query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(-1))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for n, m in unet.named_modules() if n.endswith("attn2")]
    try:
        unet(latents, timestep, encoder_hidden_states=context)
    finally:
        for handle in handles:
            handle.remove()
    mean = torch.cat(probs, dim=1).mean(1)  # (rows, h*w, tokens)
    return mean.transpose(1, 2).reshape(mean.shape[0], -1, *grid)


def test_one_latent_update_equals_a_literal_gradient_step(unet):
    """LatentGuide: z - alpha * grad L with maps read on the 16x16 layers only, against autograd by hand."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    torch.manual_seed(0)
    latents, context = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 16)
    timestep = torch.tensor(500)

    def loss(maps):  # (rows, tokens, h, w) -> (rows,): a plain function of the maps
        return (maps[:, 3] * torch.linspace(0, 1, maps.shape[-1])).sum((1, 2))

    maps = GradientMaps((16, 16))
    guide = LatentGuide(unet, scheduler, maps, loss, GuidanceSchedule((7.0,), update_steps=1),
                        {"encoder_hidden_states": context})
    with AttentionController([maps]).installed(unet) as controller:
        guided = guide(latents, 0, timestep)
        layers = controller.layers
    z = latents.clone().requires_grad_(True)
    reference = z - 7.0 * torch.autograd.grad(loss(_literal_maps(unet, z, timestep, context, (16, 16))).sum(), z)[0]
    assert torch.allclose(guided, reference.detach(), rtol=1e-4, atol=1e-6)
    assert not torch.equal(guided, latents)
    read = maps._names
    assert read and all(".attn2." in n for n in read) and len(read) < sum(lay.is_cross for lay in layers)


def test_only_the_read_layers_materialise(unet):
    """Every layer but the 16x16 cross-attention ones keeps the fused kernel during a guidance forward."""
    maps = GradientMaps((16, 16), stop_early=False)
    seen = []
    with AttentionController([maps]).installed(unet), maps.record():
        original = maps.applies_to

        def spy(call):
            result = original(call)
            seen.append((call.layer.name, call.is_cross, call.grid, result))
            return result

        maps.applies_to = spy
        unet(torch.randn(1, 4, 32, 32), 10, encoder_hidden_states=torch.randn(1, 77, 16))
    applied = [s for s in seen if s[3]]
    assert applied and all(s[1] and s[2] == (16, 16) for s in applied)
    assert any(not s[3] for s in seen)
    assert maps.maps().shape == (1, 77, 16, 16)


def test_unknown_resolution_names_the_grids(unet):
    maps = GradientMaps((7, 7))
    guide = LatentGuide(unet, __import__("diffusers").DDIMScheduler(), maps, lambda m: m.sum((1, 2, 3)),
                        GuidanceSchedule((1.0,), update_steps=1), {"encoder_hidden_states": torch.randn(1, 77, 16)})
    with AttentionController([maps]).installed(unet), pytest.raises(ValueError, match=r"attn_res=\(7, 7\).*16, 16"):
        guide(torch.randn(1, 4, 32, 32), 0, torch.tensor(10))


def _toy_guide(targets, update_steps, max_refinement_steps=20, step=0.5):
    schedule = GuidanceSchedule((step,) * 3, update_steps=update_steps, targets=targets,
                                max_refinement_steps=max_refinement_steps)
    return toy_guide(lambda m: m.flatten(1).sum(1), schedule)  # maps = the latents; loss = their sum per row


def test_refinement_updates_until_the_target_then_one_regular_update():
    guide = _toy_guide({0: 1.0}, update_steps=1)
    latents = torch.zeros(2, 1, 1, 2)
    latents[0] = 1.0  # loss 2 for row 0, 0 for row 1; each update lowers a row's loss by 2 * 0.5 = 1
    out = guide(latents, 0, torch.tensor(1))
    refinements = [h for h in guide.history if h["iteration"] > 0]
    assert len(refinements) == 1  # 2 -> 1 meets the target 1.0
    assert torch.equal(out[0], torch.full((1, 1, 2), 0.0))  # one refinement update and the regular one
    assert torch.equal(out[1], torch.full((1, 1, 2), -0.5))  # below target: only the regular update


def test_refinement_is_capped_and_skipped_outside_the_schedule():
    guide = _toy_guide({1: -100.0}, update_steps=0, max_refinement_steps=3)
    out = guide(torch.zeros(1, 1, 1, 1), 1, torch.tensor(1))
    assert len(guide.history) == 4 and torch.equal(out, torch.full((1, 1, 1, 1), -1.5))
    latents = torch.ones(1, 1, 1, 1)
    assert guide(latents, 2, torch.tensor(1)) is latents and len(guide.history) == 4
