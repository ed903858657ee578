"""Where the embedded models live: small Stable Diffusion pipelines trained here on coloured shapes.

They ship as package data (``attnctl/assets/<folder>``, diffusers format, safetensors) so demos, the CLI
and the UI draw real images offline; see ``docs/default-model.md``. Each has a short alias that
``default_model_path(alias)``, the CLI's ``--model`` and the UI's model box accept:

- ``default`` (also ``clip``): built as Stable Diffusion is, a tiny CLIP trained contrastively here and frozen
  under the UNet (``scripts/train_clip_model.py``); the default since it drew better on the quality bar;
- ``joint``: the previous default, its text encoder trained jointly with the UNet
  (``scripts/train_joint_model.py``); the CLIP model reuses its VAE and starts from its UNet.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODELS = {  # alias: (folder, script that rebuilds it)
    "default": ("clip-model", "train_clip_model.py"),
    "clip": ("clip-model", "train_clip_model.py"),
    "joint": ("joint-model", "train_joint_model.py"),
}


def embedded_model_dir(alias: str) -> Path:
    """The folder an alias names (whether or not it is installed); ``ValueError`` for an unknown alias."""
    if alias not in EMBEDDED_MODELS:
        raise ValueError(f"model alias {alias!r}: embedded models are {', '.join(map(repr, EMBEDDED_MODELS))}")
    return ASSETS_DIR / EMBEDDED_MODELS[alias][0]


def default_model_path(alias: str = "default") -> Path:
    """The shipped model's directory, ready for ``StableDiffusionPipeline.from_pretrained``.

    ``alias`` is one of ``EMBEDDED_MODELS``; a missing folder raises ``FileNotFoundError`` naming the
    command that rebuilds it.
    """
    directory = embedded_model_dir(alias)
    if not (directory / "model_index.json").is_file():
        folder, script = EMBEDDED_MODELS[alias]
        raise FileNotFoundError(
            f"the embedded {alias} model is missing from {directory}; reinstall attnctl or rebuild it "
            f"with `python scripts/{script} --export attnctl/assets/{folder}`"
        )
    return directory
