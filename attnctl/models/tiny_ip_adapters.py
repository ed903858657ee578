"""Tiny IP-Adapters for the joint-attention families, written offline in the layouts diffusers' loaders read.

``write_tiny_sd3_ip_adapter(transformer, folder)`` writes an SD3/3.5 IP-Adapter (a SigLIP-like image encoder,
diffusers' ``IPAdapterTimeImageProjection`` resampler with the timestep, one ``SD3IPAdapterJointAttnProcessor2_0``
per attention layer) that ``StableDiffusion3Pipeline.load_ip_adapter(folder)`` loads;
``write_tiny_flux_ip_adapter(transformer, folder)`` writes a Flux IP-Adapter (a CLIP vision encoder, the
4-token ``ImageProjection``, ``FluxIPAdapterAttnProcessor`` on the double-stream blocks) that
``FluxPipeline.load_ip_adapter(folder, weight_name=..., image_encoder_pretrained_model_name_or_path=...)``
loads. Weights are random, scaled so the adapter visibly changes the output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
IMAGE_ENCODER = "image_encoder"
IMAGE_SIZE = 32  # the tiny image encoders' input size (two 16 px patches a side)
_ENCODER_WIDTH = 16


def _randomised(module: torch.nn.Module, seed: int, std: float = 0.2) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every weight drawn from N(0, std^2) (norm weights 1 + noise), seeded."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator) * std
        state[name] = (1 + noise if "norm" in name and name.endswith("weight") else noise).contiguous()
    return state


def write_tiny_sd3_ip_adapter(transformer, directory: str | Path, seed: int = 0) -> Path:
    """An SD3 IP-Adapter for ``transformer`` and its SigLIP image encoder, as ``load_ip_adapter(directory)`` reads.

    The resampler's attention has one 64-wide head (the loader reads heads as ``to_q`` rows // 64); its
    timestep embedding (64 wide) is what each layer's ``norm_ip`` takes.
    """
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    directory = Path(directory)
    config = transformer.config
    inner = config.attention_head_dim * config.num_attention_heads
    projection = IPAdapterTimeImageProjection(embed_dim=_ENCODER_WIDTH, output_dim=inner, hidden_dim=64, heads=1,
                                              num_queries=4, timestep_in_dim=8)  # fmt: skip
    tensors = {f"image_proj.{k}": v for k, v in _randomised(projection, seed).items()}
    layer = SD3IPAdapterJointAttnProcessor2_0(hidden_size=inner, ip_hidden_states_dim=inner,
                                              head_dim=config.attention_head_dim, timesteps_emb_dim=64)  # fmt: skip
    for index in range(len(transformer.attn_processors)):
        tensors |= {f"ip_adapter.{index}.{k}": v for k, v in _randomised(layer, seed + 1 + index).items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / IP_ADAPTER_WEIGHTS)
    torch.manual_seed(seed)
    SiglipVisionModel(SiglipVisionConfig(
        hidden_size=_ENCODER_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=16)).save_pretrained(directory / IMAGE_ENCODER)  # fmt: skip
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory / IMAGE_ENCODER)
    return directory


def write_tiny_flux_ip_adapter(transformer, directory: str | Path, seed: int = 0) -> Path:
    """A Flux IP-Adapter for ``transformer`` (4 image tokens) and its CLIP vision encoder, in the layout of
    XLabs' adapters that ``FluxPipeline.load_ip_adapter`` converts (``proj``/``norm``, ``{block}.to_k_ip``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = Path(directory)
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator) * 0.2  # noqa: E731
    cross, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    tensors = {"image_proj.proj.weight": rand(4 * cross, _ENCODER_WIDTH), "image_proj.proj.bias": rand(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}  # fmt: skip
    for block in range(len(transformer.transformer_blocks)):
        for name in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{block}.{name}.weight"] = rand(inner, cross)
            tensors[f"ip_adapter.{block}.{name}.bias"] = rand(inner)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / IP_ADAPTER_WEIGHTS)
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
        patch_size=16, projection_dim=_ENCODER_WIDTH)).save_pretrained(directory / IMAGE_ENCODER)  # fmt: skip
    return directory


def load_tiny_ip_adapter(pipe, directory: str | Path) -> None:
    """Load a folder written above into an SD3 or Flux pipeline through its own ``load_ip_adapter``."""
    from diffusers.loaders import FluxIPAdapterMixin

    encoder = str(Path(directory).resolve() / IMAGE_ENCODER)  # SD3's loader reads a bare name relative to the cwd
    if isinstance(pipe, FluxIPAdapterMixin):
        pipe.load_ip_adapter(str(directory), weight_name=IP_ADAPTER_WEIGHTS, local_files_only=True,
                             image_encoder_pretrained_model_name_or_path=encoder,
                             image_encoder_dtype=torch.float32)  # fmt: skip
    else:
        pipe.load_ip_adapter(str(directory), weight_name=IP_ADAPTER_WEIGHTS, subfolder="", local_files_only=True,
                             image_encoder_folder=encoder)  # fmt: skip
    pipe.set_ip_adapter_scale(0.8)
