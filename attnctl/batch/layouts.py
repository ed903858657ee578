"""Output layouts: where each item's file goes, in attnctl's own layout or a benchmark's.

- ``flat``: ``<entry>_<sample>_<prompt slug>.png`` (or ``<name>.png`` / ``<name>_<sample>.png`` when the job
  line sets ``name``), images and videos alike.
- ``t2i-compbench``: ``samples/<prompt>_<ordinal:06d>.png``, the naming of T2I-CompBench's generation
  script; its evaluators read the prompt back from the part before the first ``_`` (so ``_`` in a prompt
  becomes a space) and sort by the number after the last one. ``ordinal`` counts items over the run.
- ``geneval``: ``<entry:05d>/samples/<sample:05d>.png`` plus ``<entry:05d>/metadata.jsonl`` holding the
  entry's GenEval metadata (the line's ``metadata`` object, ``prompt``, ``tag``, ``include``, ``exclude``),
  as GenEval's evaluator reads it: feed GenEval's ``evaluation_metadata.jsonl`` as the job file.
- ``vbench``: ``videos/<prompt>-<sample>.mp4``, VBench's naming; point ``--videos_path`` at ``<out>/videos``.
"""

from __future__ import annotations

import json
from typing import Any

from .naming import safe_component, slug

LAYOUTS = ("flat", "t2i-compbench", "geneval", "vbench")
#: Which output kinds each layout accepts: benchmark layouts follow their benchmark's medium.
LAYOUT_OUTPUTS = {"flat": ("image", "video"), "t2i-compbench": ("image",), "geneval": ("image",), "vbench": ("video",)}
EXTENSIONS = {"image": ".png", "video": ".mp4"}
GENEVAL_KEYS = ("tag", "include", "exclude")


def check_layout(layout: str, output: str, method: str) -> None:
    """Raise ``ValueError`` when ``layout`` cannot hold the ``output`` kind ("image"/"video") of ``method``."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")
    if output not in LAYOUT_OUTPUTS[layout]:
        kinds = " or ".join(LAYOUT_OUTPUTS[layout])
        raise ValueError(
            f"--layout {layout} holds {kinds} outputs but --method {method} makes {output}s; use --layout flat "
            f"or a method that makes {kinds}s"
        )


def item_path(
    layout: str, fields: dict[str, Any], entry: int, sample: int, ordinal: int, output: str
) -> str:
    """Relative POSIX path of one item (module docstring); made unique across the run by the planner."""
    ext = EXTENSIONS[output]
    prompt = fields["prompt"]
    if layout == "flat":
        if "name" in fields:
            stem = safe_component(fields["name"], 150)
            return f"{stem}{ext}" if fields.get("samples", 1) == 1 else f"{stem}_{sample:03d}{ext}"
        return f"{entry:05d}_{sample:03d}_{slug(prompt)}{ext}"
    if layout == "t2i-compbench":
        return f"samples/{safe_component(prompt.replace('_', ' '), 180)}_{ordinal:06d}{ext}"
    if layout == "geneval":
        return f"{entry:05d}/samples/{sample:05d}{ext}"
    if layout == "vbench":
        return f"videos/{safe_component(prompt, 180)}-{sample}{ext}"
    raise ValueError(f"--layout {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")


def entry_files(layout: str, fields: dict[str, Any], entry: int) -> dict[str, str]:
    """Extra files one entry needs beside its items (GenEval's ``metadata.jsonl``), path -> text."""
    if layout != "geneval":
        return {}
    metadata = {**fields.get("metadata", {}), "prompt": fields["prompt"]}
    metadata.update({key: fields[key] for key in GENEVAL_KEYS if key in fields})
    return {f"{entry:05d}/metadata.jsonl": json.dumps(metadata, ensure_ascii=False) + "\n"}
