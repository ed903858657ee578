"""The core is light: its window kernels (used by attnctl.llm and attnctl.vision) load no diffusers.

The package-wide import graph is checked for cycles in tests/test_import_graph.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("modules", ["attnctl.core.windows, attnctl.core.window_attention", "attnctl.core"])
def test_window_kernels_and_the_core_package_load_without_diffusers(modules):
    code = f"import sys, {modules}; print('diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
