"""Structured Diffusion Guidance (Feng et al., ICLR 2023): phrase parsing, aligned encodings, the control."""

from .guidance import STRUCT_MODES, PhraseEncoding, StructuredControl, align, align_all, structured_sets
from .phrases import Phrase, extract_phrases, load_english_pipeline, normalize_prompt, prompt_phrases

__all__ = [
    "STRUCT_MODES",
    "Phrase",
    "PhraseEncoding",
    "StructuredControl",
    "align",
    "align_all",
    "extract_phrases",
    "load_english_pipeline",
    "normalize_prompt",
    "prompt_phrases",
    "structured_sets",
]
