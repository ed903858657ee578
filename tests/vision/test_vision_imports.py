"""Importing the sibling packages stays light: no diffusers (issue #15) and no transformers until used."""

from __future__ import annotations

import subprocess
import sys


def test_importing_llm_and_vision_loads_neither_diffusers_nor_transformers():
    code = (
        "import sys, attnctl.llm, attnctl.vision\n"
        "print(sorted(name for name in ('diffusers', 'transformers') if name in sys.modules))\n"
        "attnctl.vision.NeighborhoodAttention2d, attnctl.llm.make_mqar  # lazy names still resolve\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
