"""Folding a latent shift/scale into the VAE keeps decode(encode(x)) and standardises the latents."""

from __future__ import annotations

import pytest
import torch

from attnctl.models.latent_norm import standardize_vae_latents
from attnctl.models.tiny import build_tiny_sd_components


def test_folding_preserves_the_autoencoder_and_standardises_latents():
    vae = build_tiny_sd_components(seed=0)["vae"].eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        reconstruction = vae.decode(before.mean).sample
        mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 1.5, 3.0])
        standardize_vae_latents(vae, mean, std)
        after = vae.encode(images).latent_dist
        shape = (1, -1, 1, 1)
        torch.testing.assert_close(after.mean, (before.mean - mean.view(shape)) / std.view(shape))
        torch.testing.assert_close(after.std, before.std / std.view(shape))
        torch.testing.assert_close(vae.decode(after.mean).sample, reconstruction, atol=1e-5, rtol=1e-5)
    assert vae.config.scaling_factor == 1.0


def test_bad_statistics_raise():
    vae = build_tiny_sd_components(seed=0)["vae"]
    with pytest.raises(ValueError, match="need \\(4,\\)"):
        standardize_vae_latents(vae, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="must be positive"):
        standardize_vae_latents(vae, torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]))
