"""Tiny Wan text-to-video pipelines built from configs, for offline tests, examples and benchmarks.

Every component has the architecture of its Wan 2.1 counterpart at toy width: a UMT5 text encoder, a
word-level tokenizer written here (no SentencePiece model can be downloaded), the causal 3-D VAE and the Wan
transformer (RMS q/k norms, 3-D rotary embedding, cross-attention). Weights are random, so the videos are
noise, but deterministic noise, which is what equivalence tests need.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from .tiny import TINY_WORDS

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
VIDEO_WORDS = ("video", "walking", "running", "flying", "swimming", "street", "beach", "sky", "sea", "forest")
LATENT_CHANNELS = 4


def write_wan_tokenizer(directory: str | Path, words: Iterable[str]) -> Path:
    """Write a word-level fast tokenizer (lower-case, whitespace split, ``</s>`` appended) like UMT5's specials.

    Pad is id 0 and EOS id 1 as in T5; unknown words map to ``<unk>``. ``AutoTokenizer`` loads the folder.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    directory = Path(directory)
    fast.save_pretrained(directory)
    return directory


_TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)


def build_tiny_wan_transformer(seed: int = 0, **config) -> torch.nn.Module:
    """A 2-block ``WanTransformer3DModel`` (2 heads x 12 channels); ``config`` overrides any argument."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**(_TINY_TRANSFORMER | config))


def build_tiny_t5_encoder(tokenizer, d_model: int, seed: int, umt5: bool = False) -> torch.nn.Module:
    """A 2-layer T5 encoder (pad 0, ``</s>`` 1) of width ``d_model``; ``umt5`` gives Wan's UMT5 variant."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    torch.manual_seed(seed)
    return model_class(
        config_class(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def build_tiny_wan_components(seed: int = 0, transformer_config: dict | None = None) -> dict:
    """The components of a :class:`~diffusers.WanPipeline`, freshly initialised with ``seed``."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(write_wan_tokenizer(tmp, [*TINY_WORDS, *VIDEO_WORDS]))
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    )
    text_encoder = build_tiny_t5_encoder(tokenizer, 16, seed, umt5=True)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder.eval(),  # UMT5 dropout off, as from_pretrained leaves it
        "vae": vae,
        "scheduler": scheduler,
        "transformer": build_tiny_wan_transformer(seed, **(transformer_config or {})),
    }


WAN_VARIANTS = ("t2v", "i2v-2.1", "i2v-2.2", "ti2v-5b", "vace")
IMAGE_SIZE = 32  # the tiny CLIP vision encoder's input size (patch 8: 16 patches + 1 class token)


def build_tiny_wan_variant(variant: str, seed: int = 0):
    """A stock tiny Wan pipeline of one variant (``WAN_VARIANTS``), every part built from a config.

    * ``"t2v"``: :class:`~diffusers.WanPipeline`;
    * ``"i2v-2.1"``: :class:`~diffusers.WanImageToVideoPipeline` with a 2 z + 4 channel transformer, CLIP image
      context (``image_dim``, ``added_kv_proj_dim``) and a tiny CLIP vision encoder;
    * ``"i2v-2.2"``: the same without CLIP, with ``transformer_2`` and ``boundary_ratio`` 0.9 (A14B layout);
    * ``"ti2v-5b"``: image-to-video with ``expand_timesteps`` (z-channel transformer, first frame replaced);
    * ``"vace"``: :class:`~diffusers.WanVACEPipeline` (3 blocks, control blocks after 0 and 2).
    """
    from diffusers import WanImageToVideoPipeline, WanPipeline, WanVACEPipeline, WanVACETransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    if variant not in WAN_VARIANTS:
        raise ValueError(f"variant={variant!r} must be one of {WAN_VARIANTS}")
    components = build_tiny_wan_components(seed)
    if variant == "t2v":
        return WanPipeline(**components)
    if variant == "vace":
        torch.manual_seed(seed)
        components["transformer"] = WanVACETransformer3DModel(
            **(_TINY_TRANSFORMER | dict(num_layers=3, vace_layers=[0, 2], vace_in_channels=2 * LATENT_CHANNELS + 64))
        )
        return WanVACEPipeline(**components)
    condition = 2 * LATENT_CHANNELS + 4  # z noise + 4 mask + z condition channels
    if variant == "ti2v-5b":
        return WanImageToVideoPipeline(**components, expand_timesteps=True)
    if variant == "i2v-2.2":
        components["transformer"] = build_tiny_wan_transformer(seed, in_channels=condition)
        return WanImageToVideoPipeline(
            **components, transformer_2=build_tiny_wan_transformer(seed + 1, in_channels=condition), boundary_ratio=0.9
        )
    torch.manual_seed(seed)
    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=IMAGE_SIZE, patch_size=8,
        )
    )
    components["transformer"] = build_tiny_wan_transformer(
        seed, in_channels=condition, image_dim=16, added_kv_proj_dim=24
    )
    return WanImageToVideoPipeline(
        **components, image_encoder=encoder, image_processor=CLIPImageProcessor(crop_size=IMAGE_SIZE, size=IMAGE_SIZE)
    )


def save_tiny_wan_pipeline(directory: str | Path, seed: int = 0, variant: str = "t2v") -> Path:
    """Build a stock tiny Wan pipeline (:func:`build_tiny_wan_variant`) and ``save_pretrained`` it, like a Hub
    checkpoint."""
    directory = Path(directory)
    build_tiny_wan_variant(variant, seed).save_pretrained(directory)
    return directory


def tiny_wan_inputs(variant: str, size: int = 32, frames: int = 5) -> dict:
    """A variant's own pipeline inputs at ``size`` x ``size`` pixels, deterministic: nothing for text-to-video,
    an image for image-to-video, a control video, an alternating mask and a reference image for VACE."""
    import numpy as np
    import PIL.Image

    def picture(seed: int) -> PIL.Image.Image:
        return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))

    if variant not in WAN_VARIANTS:
        raise ValueError(f"variant={variant!r} must be one of {WAN_VARIANTS}")
    if variant == "t2v":
        return {}
    if variant == "vace":
        mask = [PIL.Image.new("L", (size, size), 255 if i % 2 else 0) for i in range(frames)]
        return dict(video=[picture(seed) for seed in range(frames)], mask=mask, reference_images=[picture(9)],
                    conditioning_scale=[1.0, 0.5])
    return dict(image=picture(1))
