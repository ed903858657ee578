"""Lazy package exports (PEP 562): a package names the modules it re-exports from and their names; a module
is imported on first use of one of its names, so importing the package stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Iterable[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """The ``__all__`` (sorted) and the module-level ``__getattr__`` of ``package``.

    ``modules`` maps each module, absolute (``"attnctl.spec"``) or relative to ``package`` (``".controls"``) as
    :func:`importlib.import_module` reads it, to the names the package exports from it.
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(home[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(home), __getattr__
