"""Fold a per-channel latent shift and scale into an ``AutoencoderKL``'s 1x1 quant convolutions.

Stable Diffusion pipelines only divide latents by one ``scaling_factor``; a small VAE trained here has
latents with per-channel means far from zero (the plain background). Folding ``z' = (z - mean) / std`` into
``quant_conv`` and its inverse into ``post_quant_conv`` gives standard-normal-ish latents with
``scaling_factor = 1`` while ``decode(encode(x))`` stays the same function.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def standardize_vae_latents(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rewrite ``vae.quant_conv`` / ``vae.post_quant_conv`` in place so its latents become (z - mean) / std.

    ``mean`` and ``std`` have one entry per latent channel; the posterior's log-variance shifts by
    ``-2 log std`` so sampled latents scale the same way. Sets ``scaling_factor`` to 1.
    """
    channels = vae.config.latent_channels
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"mean/std shapes {tuple(mean.shape)}/{tuple(std.shape)}: need ({channels},)")
    if not bool((std > 0).all()):
        raise ValueError(f"std={std.tolist()}: every channel's std must be positive")
    quant, post = vae.quant_conv, vae.post_quant_conv
    # quant_conv output: (mean channels, log-variance channels), each `channels` wide
    quant.weight[:channels] /= std.view(-1, 1, 1, 1)
    quant.bias[:channels] = (quant.bias[:channels] - mean) / std
    quant.bias[channels:] -= 2 * torch.log(std)
    # post_quant_conv(z) with z = z' * std + mean: W z + b = (W * std) z' + (W mean + b)
    post.bias += torch.einsum("oi,i->o", post.weight[:, :, 0, 0], mean)
    post.weight *= std.view(1, -1, 1, 1)
    vae.register_to_config(scaling_factor=1.0)
