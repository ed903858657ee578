"""What the subcommands share: exit codes and resolving ``--model`` (a folder, a hub id, or the default)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TORCHVISION_NOTICE = "requires torchvision (not installed)"


def drop_torchvision_notice(record: logging.LogRecord) -> bool:
    """Logging filter: drop transformers' notice that it falls back to its PIL image processors without torchvision.

    diffusers imports those processors for the safety checker's feature extractor, so every command printed it
    twice; nothing attnctl generates depends on it.
    """
    return _TORCHVISION_NOTICE not in record.getMessage()


def quiet_import_notices() -> None:
    """Install :func:`drop_torchvision_notice` on the transformers logger that emits it (idempotent)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if drop_torchvision_notice not in logger.filters:
        logger.addFilter(drop_torchvision_notice)


def _embedded_aliases() -> tuple[str, ...]:
    """Aliases of the embedded models (none when this installation has no ``attnctl.models.default``)."""
    try:
        from attnctl.models.default import EMBEDDED_MODELS
    except ImportError:
        return ()
    return tuple(EMBEDDED_MODELS)


def resolve_model(model: str | None) -> str:
    """``--model``: an existing local folder, a Hugging Face hub id (``org/name``), an embedded model's alias
    (``default``, ``clip``: ``attnctl.models.default.EMBEDDED_MODELS``), or none for the embedded default.

    Raises ``ValueError`` for a path that does not exist or is not a diffusers pipeline folder, and when the
    embedded model asked for (or, with no model, the default) is not installed.
    """
    if model is None or model in _embedded_aliases():
        try:
            from attnctl.models.default import default_model_path
        except ImportError:
            raise ValueError(
                "no --model given and this attnctl installation has no embedded default model; pass "
                "--model <diffusers folder or hub id>"
            ) from None
        try:
            return str(default_model_path(model or "default"))
        except OSError as err:
            raise ValueError(f"{err}; or pass --model <diffusers folder or hub id>") from None
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise ValueError(f"--model {model}: no model_index.json there; expected a diffusers pipeline folder")
    if path.exists():
        return str(path)
    if _HUB_ID.fullmatch(model):
        return model
    raise ValueError(f"--model {model!r}: no such folder, and not a hub id of the form org/name")
