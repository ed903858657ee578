"""attnctl.llm: attention control for Hugging Face transformers causal language models.

Probes (:mod:`.probes`), gated attention (:mod:`.gating`), training-free sliding windows with sinks
(:mod:`.sliding_window`), Lizard-style hybrid attention (:mod:`.hybrid`), Fate-style expert prediction and
caching (:mod:`.experts`) and the MQAR task (:mod:`.mqar`). Every patch is reversible (:mod:`.patching`).
Names are imported lazily, so ``import attnctl.llm`` does not load transformers.
"""

from __future__ import annotations

from attnctl._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        ".probes": ("probe_attention", "AttentionProbe"),
        ".gating": ("add_output_gates", "AttentionOutputGate"),
        ".sliding_window": ("apply_sliding_window", "sliding_window_attention"),
        ".hybrid": ("apply_hybrid_attention", "LizardAttention"),
        ".experts": (
            "record_routing",
            "predict_next_layer_experts",
            "prediction_accuracy",
            "simulate_expert_cache",
        ),
        ".mqar": ("make_mqar", "run_mqar"),
        ".tiny": ("build_tiny_causal_lm", "build_char_tokenizer"),
    },
)
