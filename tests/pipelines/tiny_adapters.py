"""Tiny IP-Adapter and LoRA weights built offline, loaded through diffusers' own loaders (test helpers)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

IMAGE_EMBED_DIM = 8  # the tiny CLIP vision model's projection width


def write_tiny_ip_adapter(unet, directory: str | Path, seed: int = 0) -> Path:
    """A plain IP-Adapter for ``unet`` (4 image tokens) and its CLIP image encoder, in the layout
    ``pipe.load_ip_adapter(directory, subfolder="", weight_name="ip-adapter.safetensors")`` reads.

    The ``ip_adapter`` keys count the cross-attention layers as diffusers' converter does (1, 3, 5, ...).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = Path(directory)
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    rand = lambda *shape: torch.randn(*shape, generator=generator) * 0.2  # noqa: E731
    tensors = {"image_proj.proj.weight": rand(4 * cross, IMAGE_EMBED_DIM), "image_proj.proj.bias": rand(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(hidden, cross)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(hidden, cross)
        key_id += 2
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "ip-adapter.safetensors")
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=16, projection_dim=IMAGE_EMBED_DIM))
    encoder.save_pretrained(directory / "image_encoder")
    return directory


def load_tiny_ip_adapter(pipe, directory: str | Path) -> None:
    pipe.load_ip_adapter(str(directory), subfolder="", weight_name="ip-adapter.safetensors",
                         image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.8)


def add_tiny_lora(pipe, seed: int = 0) -> None:
    """Random (non-zero) LoRA adapters on the denoiser's attention projections and on the first text encoder."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    pipe.unet.add_adapter(config)
    torch.manual_seed(seed + 1)
    # peft directly: transformers' own adapter API wants a newer peft than PyPI has for this environment
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj"],
                                       init_lora_weights=False), pipe.text_encoder)
