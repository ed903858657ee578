"""Packaging: every Python package folder is installed, under the attnctl namespace."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"pipelines": "attnctl.pipelines", "app": "attnctl.app"}


def _config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_config()["packages"])
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts[0] in ("attnctl", *MAPPED):
            head = MAPPED.get(parts[0], parts[0])
            found.add(".".join((head, *parts[1:])))
    assert found == listed


def test_front_end_folders_install_under_the_attnctl_namespace():
    assert _config()["package-dir"] == {namespaced: folder for folder, namespaced in MAPPED.items()}
    import attnctl.pipelines

    assert Path(attnctl.pipelines.__file__).parent == ROOT / "pipelines"


def test_the_fused_window_kernel_source_ships_with_the_package():
    from attnctl.core import window_cpu

    patterns = _config()["package-data"]["attnctl.core"]
    assert window_cpu.SOURCE.is_file() and any(window_cpu.SOURCE.match(pattern) for pattern in patterns)
