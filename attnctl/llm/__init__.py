"""attnctl.llm: attention control for Hugging Face transformers causal language models.

Probes (:mod:`.probes`), gated attention (:mod:`.gating`), training-free sliding windows with sinks
(:mod:`.sliding_window`), Lizard-style hybrid attention (:mod:`.hybrid`), Fate-style expert prediction and
caching (:mod:`.experts`) and the MQAR task (:mod:`.mqar`). Every patch is reversible (:mod:`.patching`).
Names are imported lazily, so ``import attnctl.llm`` does not load transformers.
"""

from __future__ import annotations

from attnctl._lazy import lazy_getattr

_LAZY = {
    "probe_attention": ".probes",
    "AttentionProbe": ".probes",
    "add_output_gates": ".gating",
    "AttentionOutputGate": ".gating",
    "apply_sliding_window": ".sliding_window",
    "sliding_window_attention": ".sliding_window",
    "apply_hybrid_attention": ".hybrid",
    "LizardAttention": ".hybrid",
    "record_routing": ".experts",
    "predict_next_layer_experts": ".experts",
    "prediction_accuracy": ".experts",
    "simulate_expert_cache": ".experts",
    "make_mqar": ".mqar",
    "run_mqar": ".mqar",
    "build_tiny_causal_lm": ".tiny",
    "build_char_tokenizer": ".tiny",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
