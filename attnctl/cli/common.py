"""What the subcommands share: exit codes, quiet imports and ``--model`` (a folder, a hub id, or the default)."""

from __future__ import annotations

import logging
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
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


def model_help(default: str = "the embedded default") -> str:
    """``--model``'s help text, naming the embedded aliases (``attnctl.models.resolve.DEFAULT_ALIASES``)."""
    from attnctl.models.resolve import DEFAULT_ALIASES

    return f"diffusers folder, hub id, or embedded alias {'/'.join(DEFAULT_ALIASES)} (default: {default})"


def model_argument(model: str | None, method: Any = None) -> str:
    """``--model`` as a loadable folder or hub id (none: the embedded default), checked against ``method``'s
    families when given (:mod:`attnctl.models.resolve`); errors are worded for the command line."""
    from attnctl.models.resolve import ModelError, resolve_model

    try:
        resolved = resolve_model(model)
        if method is not None:
            resolved.require(method)
    except ModelError as err:
        if err.model is None:
            raise ValueError(f"{err.reason}; or pass --model <diffusers folder or hub id>") from None
        raise ValueError(f"--model {err.describe()}") from None
    return resolved.source
