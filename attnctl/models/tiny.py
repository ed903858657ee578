"""Tiny Stable Diffusion pipelines built from configs, for offline tests and examples.

The components mirror diffusers' own test dummies (a few thousand parameters each) but with cross-attention
at two resolutions, so attention controls meet every layer kind a real SD UNet has. The tokenizer is written
locally (:mod:`attnctl.models.tokenizer`); nothing touches the network. Weights are random: the outputs are
noise, but deterministic noise, which is what equivalence tests need.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

TINY_WORDS = (
    "a an the and with of on in to left right top red green blue yellow white black orange purple pink brown "
    "gray gold silver car bench dog cat bird sheep apple banana bowl cup clock chair table book vase box cube "
    "sphere circle square triangle star small large big little photo picture of sitting next"
).split()


def build_tiny_sd_components(seed: int = 0, cross_attention_dim: int = 16) -> dict:
    """The components of a :class:`~diffusers.StableDiffusionPipeline`, freshly initialised with ``seed``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .tokenizer import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, TINY_WORDS))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cross_attention_dim,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def save_tiny_sd_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it to ``directory``; load it with ``from_pretrained``."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    StableDiffusionPipeline(**build_tiny_sd_components(seed)).save_pretrained(directory)
    return directory
