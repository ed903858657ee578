"""Lazy package exports (PEP 562): a package names what it exports and the module each name lives in, and
the module is imported on first use of the name, so importing the package stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a module-level ``__getattr__`` for ``package`` that imports ``exports[name]`` on first use.

    ``exports`` maps each exported name to its module, absolute (``"attnctl.spec"``) or relative to
    ``package`` (``".controls"``), as :func:`importlib.import_module` reads it.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
