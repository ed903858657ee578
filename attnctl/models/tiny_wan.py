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


def build_tiny_wan_transformer(seed: int = 0, **config) -> torch.nn.Module:
    """A 2-block ``WanTransformer3DModel`` (2 heads x 12 channels); ``config`` overrides any argument."""
    from diffusers import WanTransformer3DModel

    arguments = dict(
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
    torch.manual_seed(seed)
    return WanTransformer3DModel(**(arguments | config))


def build_tiny_wan_components(seed: int = 0, transformer_config: dict | None = None) -> dict:
    """The components of a :class:`~diffusers.WanPipeline`, freshly initialised with ``seed``."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

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
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "transformer": build_tiny_wan_transformer(seed, **(transformer_config or {})),
    }


def save_tiny_wan_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """Build a stock tiny :class:`~diffusers.WanPipeline` and ``save_pretrained`` it, like a Hub checkpoint."""
    from diffusers import WanPipeline

    directory = Path(directory)
    WanPipeline(**build_tiny_wan_components(seed)).save_pretrained(directory)
    return directory
