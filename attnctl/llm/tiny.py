"""Tiny causal language models and a character tokenizer built offline from configs, for tests and demos.

Every family the subpackage supports has a builder here: Llama, Qwen2 and Mistral (dense, grouped-query
attention; Mistral with its native ``sliding_window``) and Qwen2-MoE and Mixtral (mixture of experts).
Weights are random (seeded); nothing is downloaded.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

FAMILIES = ("llama", "qwen2", "mistral", "qwen2_moe", "mixtral")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII: 4 special tokens + 95 characters = 99 ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    characters = [chr(code) for code in range(32, 127)]
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *characters])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _config(
    family: str,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    max_positions: int,
    num_experts: int,
    experts_per_token: int,
    sliding_window: int | None,
):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
        tie_word_embeddings=False,
    )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if family == "mistral":
        from transformers import MistralConfig

        return MistralConfig(**common, sliding_window=sliding_window)
    if family == "qwen2_moe":
        from transformers import Qwen2MoeConfig

        return Qwen2MoeConfig(
            **common,
            num_experts=num_experts,
            num_experts_per_tok=experts_per_token,
            moe_intermediate_size=hidden_size,
            shared_expert_intermediate_size=hidden_size,
            decoder_sparse_step=1,
        )
    from transformers import MixtralConfig

    return MixtralConfig(**common, num_local_experts=num_experts, num_experts_per_tok=experts_per_token)


def build_tiny_causal_lm(
    family: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 99,
    max_positions: int = 4096,
    num_experts: int = 8,
    experts_per_token: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    sliding_window: int | None = 16,
) -> PreTrainedModel:
    """A randomly initialised ``*ForCausalLM`` of ``family`` in eval mode (``use_cache`` off by default).

    ``vocab_size`` defaults to :func:`build_char_tokenizer`'s 99 ids; the MoE arguments only apply to
    ``qwen2_moe`` and ``mixtral``; ``sliding_window`` (the native window, None for none) only to ``mistral``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; choose one of {FAMILIES}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads}: hidden_size "
            "must be "
            "a multiple of num_heads and num_heads a multiple of num_kv_heads"
        )
    from transformers import AutoModelForCausalLM

    config = _config(
        family,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        vocab_size,
        max_positions,
        num_experts,
        experts_per_token,
        sliding_window,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()
