"""Which model a user means: a local diffusers folder, a hub id, or the embedded default; and its family.

One resolver for the CLI (``--model``) and the UI (the model boxes), with typed errors so each front end words
them its own way (``--model x: ...`` on the command line, ``Model 'x': ...`` in the page) without parsing the
other's text. Nothing here loads weights: the family comes from ``model_index.json``
(:func:`attnctl.models.families.detect_family`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .default import EMBEDDED_MODELS

#: Names of the embedded models (no name at all means ``"default"``), unless a folder of that name exists: the
#: keys of ``attnctl.models.default.EMBEDDED_MODELS``, which lists them with their folders.
DEFAULT_ALIASES = tuple(EMBEDDED_MODELS)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelError(ValueError):
    """A model that cannot be used; ``model`` is what the user typed (``None``: the default), ``reason`` why."""

    def __init__(self, model: str | None, reason: str):
        self.model, self.reason = model, reason
        super().__init__(self.describe())

    def describe(self) -> str:
        """``'x': reason`` for a named model, the reason alone for the default."""
        return self.reason if self.model is None else f"{self.model!r}: {self.reason}"


class ModelNotFound(ModelError):
    """No such folder, and not a hub id."""


class NotAPipelineFolder(ModelError):
    """A folder without ``model_index.json``."""


class NoDefaultModel(ModelError):
    """No model given and this installation has no embedded default model."""


class UnsupportedFamily(ModelError):
    """The model's family is not one attnctl supports, or not one the method supports."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for ``from_pretrained``: ``source`` (a folder path or a hub id) and how it was named."""

    source: str
    origin: str  # "default", "folder" or "hub"

    def family(self) -> Any:
        """The model's :class:`~attnctl.models.families.Family`, read from its ``model_index.json``."""
        from attnctl.models.families import detect_family

        try:
            return detect_family(self.source)
        except ValueError as err:
            raise UnsupportedFamily(self.source, str(err)) from None
        except OSError as err:  # a hub id whose model_index.json cannot be fetched (offline, private, typo)
            raise ModelNotFound(self.source, f"its model_index.json cannot be read ({err})") from None

    def require(self, method: Any) -> Any:
        """The family, after checking that ``method`` (a :class:`~attnctl.spec.MethodSpec`) applies to it."""
        family = self.family()
        try:
            method.require_family(family)
        except ValueError as err:
            raise UnsupportedFamily(self.source, str(err)) from None
        return family


def default_model(alias: str = "default") -> ResolvedModel:
    """The embedded model ``alias`` names; :class:`NoDefaultModel` when this installation lacks it."""
    try:
        from attnctl.models.default import default_model_path

        return ResolvedModel(str(default_model_path(alias)), "default")
    except (ImportError, OSError) as err:
        raise NoDefaultModel(None, f"{err}" if isinstance(err, OSError) else
                             "this attnctl installation has no embedded default model") from None


def resolve_model(model: str | None) -> ResolvedModel:
    """``model`` as a :class:`ResolvedModel`: an existing folder, a hub id (``org/name``), or the default for
    ``None``, blank text and :data:`DEFAULT_ALIASES`. Raises a :class:`ModelError` subclass."""
    text = (model or "").strip()
    path = Path(text).expanduser()
    if not text or (text in DEFAULT_ALIASES and not path.exists()):
        return default_model(text or "default")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise NotAPipelineFolder(text, "no model_index.json there; expected a diffusers pipeline folder")
        return ResolvedModel(str(path), "folder")
    if path.exists():
        raise NotAPipelineFolder(text, "a file, not a folder; expected a diffusers pipeline folder")
    if _HUB_ID.fullmatch(text):
        return ResolvedModel(text, "hub")
    raise ModelNotFound(text, "no such folder, and not a hub id of the form org/name")
