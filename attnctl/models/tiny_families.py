"""Tiny stock pipelines of every text-to-image family attnctl supports, built from configs, offline.

SDXL, SD3.0, SD3.5 (a dual-attention layer and RMS q/k norms), Flux-dev (guidance embedding) and
PixArt-Sigma, each with the layer kinds its released model has at toy width (the recipes of
``shared/docs/families.md`` section 9). CLIP tokenizers are written with :mod:`attnctl.models.tokenizer`, T5
stand-ins with :func:`attnctl.models.tiny_wan.write_wan_tokenizer` (word level, ``</s>`` appended, pad 0, no
BOS, as T5). Weights are random: the images are noise, but deterministic noise, which equality tests need.

``save_tiny_family_pipeline("sd3", directory)`` writes a folder that the family's diffusers pipeline (and
``DiffusionPipeline``) loads with ``from_pretrained``, like a Hub checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .tiny import TINY_WORDS
from .tiny_wan import build_tiny_t5_encoder, write_wan_tokenizer
from .tokenizer import write_clip_tokenizer

# The T5 stand-in truncates prompts to this many tokens in tests (pass it as ``max_sequence_length``).
TINY_MAX_SEQUENCE_LENGTH = 16


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, TINY_WORDS))


def _t5_tokenizer():
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return AutoTokenizer.from_pretrained(write_wan_tokenizer(tmp, TINY_WORDS))


def _clip_text(tokenizer, hidden: int, seed: int, with_projection: bool = False) -> torch.nn.Module:
    """A 2-layer CLIP text encoder; ``with_projection`` gives the pooled-projection variant SDXL/SD3 use."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=hidden,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(seed: int, flow: bool = False) -> torch.nn.Module:
    """A 2-level ``AutoencoderKL`` (factor 2); ``flow`` gives SD3/Flux's variant (no quant convs, a shift)."""
    from diffusers import AutoencoderKL

    extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        **(extra if flow else {}),
    )


def _in_eval_mode(components: dict) -> dict:
    """Every module in inference mode, as ``from_pretrained`` leaves it (T5 has dropout)."""
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return components


def build_tiny_sdxl_components(seed: int = 0) -> dict:
    """A :class:`~diffusers.StableDiffusionXLPipeline`: no attention at the first level, 2 layers at the last.

    The UNet reads CLIP-L (8 channels) concatenated with CLIP-G (16), as SDXL reads 768 + 1280.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16,
        cross_attention_dim=8 + 16,
        norm_num_groups=4,
    )
    return _in_eval_mode(
        {
            "unet": unet,
            "vae": _vae(seed),
            "text_encoder": _clip_text(tokenizer, 8, seed),
            "text_encoder_2": _clip_text(tokenizer_2, 16, seed, with_projection=True),
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "scheduler": EulerDiscreteScheduler(),
        }
    )


def build_tiny_sd3_components(seed: int = 0, version: str = "3.0") -> dict:
    """A :class:`~diffusers.StableDiffusion3Pipeline`, 3 joint blocks (the last one ``context_pre_only``).

    ``version="3.5"`` adds SD3.5-Medium's traits: block 0 is a dual-attention layer (an image-only ``attn2``
    sharing ``attn``'s processor object) and q/k are RMS-normalised. CLIP-L (8) + CLIP-G (16) channels stay
    below the T5 width (32), as families.md trap 22 requires.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    if version not in ("3.0", "3.5"):
        raise ValueError(f"version must be '3.0' or '3.5', got {version!r}")
    dual = version == "3.5"
    tokenizers = [_clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()]
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=8 + 16,
        pos_embed_max_size=32,
        dual_attention_layers=(0,) if dual else (),
        qk_norm="rms_norm" if dual else None,
    )
    return _in_eval_mode(
        {
            "transformer": transformer,
            "vae": _vae(seed, flow=True),
            "text_encoder": _clip_text(tokenizers[0], 8, seed, with_projection=True),
            "text_encoder_2": _clip_text(tokenizers[1], 16, seed, with_projection=True),
            "text_encoder_3": build_tiny_t5_encoder(tokenizers[2], 32, seed),
            "tokenizer": tokenizers[0],
            "tokenizer_2": tokenizers[1],
            "tokenizer_3": tokenizers[2],
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        }
    )


def build_tiny_flux_components(seed: int = 0) -> dict:
    """A Flux-dev :class:`~diffusers.FluxPipeline`: 2 double-stream and 2 single-stream blocks, guidance embeds.

    The rotary axes (4, 4, 8) sum to the head dimension (16); the packed latents have 4 x 4 = 16 channels.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    return _in_eval_mode(
        {
            "transformer": transformer,
            "vae": _vae(seed, flow=True),
            "text_encoder": _clip_text(tokenizer, 16, seed),
            "text_encoder_2": build_tiny_t5_encoder(tokenizer_2, 32, seed),
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        }
    )


def build_tiny_pixart_components(seed: int = 0) -> dict:
    """A :class:`~diffusers.PixArtSigmaPipeline`: 2 blocks of self- and T5 cross-attention (masked padding)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=16,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return _in_eval_mode(
        {
            "transformer": transformer,
            "vae": _vae(seed),
            "text_encoder": build_tiny_t5_encoder(tokenizer, 32, seed),
            "tokenizer": tokenizer,
            "scheduler": DPMSolverMultistepScheduler(),
        }
    )


def _sd35_components(seed: int = 0) -> dict:
    return build_tiny_sd3_components(seed, version="3.5")


# family -> (diffusers pipeline class name, component builder)
TINY_FAMILIES: dict[str, tuple[str, Callable[[int], dict]]] = {
    "sdxl": ("StableDiffusionXLPipeline", build_tiny_sdxl_components),
    "sd3": ("StableDiffusion3Pipeline", build_tiny_sd3_components),
    "sd35": ("StableDiffusion3Pipeline", _sd35_components),
    "flux": ("FluxPipeline", build_tiny_flux_components),
    "pixart": ("PixArtSigmaPipeline", build_tiny_pixart_components),
}


def build_tiny_family_pipeline(family: str, seed: int = 0):
    """The stock diffusers pipeline of ``family`` (one of :data:`TINY_FAMILIES`), freshly initialised."""
    import diffusers

    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {sorted(TINY_FAMILIES)}, got {family!r}")
    class_name, build = TINY_FAMILIES[family]
    return getattr(diffusers, class_name)(**build(seed))


def tiny_call_arguments(family: str, seed: int = 0, steps: int = 2) -> dict:
    """Arguments of a fast deterministic call of the tiny ``family`` pipeline: 32 x 48 px, latents out."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {sorted(TINY_FAMILIES)}, got {family!r}")
    arguments = dict(num_inference_steps=steps, height=32, width=48, output_type="latent",
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    if family != "sdxl":  # T5 prompts are truncated to the stand-in's length
        arguments["max_sequence_length"] = TINY_MAX_SEQUENCE_LENGTH
    if family == "pixart":
        arguments |= dict(use_resolution_binning=False, clean_caption=False)
    return arguments


def save_tiny_family_pipeline(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` and ``save_pretrained`` it to ``directory``."""
    directory = Path(directory)
    build_tiny_family_pipeline(family, seed).save_pretrained(directory)
    return directory
