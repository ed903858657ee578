"""Where the embedded default model lives: a small Stable Diffusion pipeline trained on coloured shapes.

It ships as package data (``attnctl/assets/default-model``, diffusers format, safetensors) so demos, the CLI
and the UI draw real images offline; see ``docs/default-model.md`` and ``scripts/train_default_model.py``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-model"


def default_model_path() -> Path:
    """The shipped model's directory, ready for ``StableDiffusionPipeline.from_pretrained``."""
    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; reinstall attnctl or rebuild it "
            "with `python scripts/train_default_model.py --export attnctl/assets/default-model`"
        )
    return DEFAULT_MODEL_DIR
