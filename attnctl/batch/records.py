"""What is recorded about a finished item: its manifest line and the PNG text chunks made from it."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import torch

from .plan import Item


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def item_record(
    item: Item, method: str, model: str, source: str, parameters: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """The manifest line (and PNG ``attnctl`` chunk) of one finished item; ``extra`` adds fields."""
    import diffusers

    from attnctl import __version__

    fields = item.fields
    record = {
        "path": item.path, "entry": item.job.entry, "sample": item.sample, "line": item.job.line,
        "source": source, "prompt": fields["prompt"], "seed": item.seed, "method": method,
        "model": model, "parameters": dict(parameters),
        "fingerprint": item.fingerprint, "attnctl_version": __version__, "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__, "finished_at": _now(), **extra,
    }
    for name in ("negative_prompt", "metadata"):
        if name in fields:
            record[name] = fields[name]
    return record


def png_text(record: Mapping[str, Any]) -> dict[str, str]:
    """The PNG text chunks of one record: the main facts one by one, and the whole record as JSON."""
    text = {
        "prompt": record["prompt"], "seed": str(record["seed"]), "method": record["method"],
        "model": record["model"], "parameters": json.dumps(record["parameters"], sort_keys=True),
        "attnctl_version": record["attnctl_version"],
        "attnctl": json.dumps(record, ensure_ascii=False, sort_keys=True),
    }
    if "negative_prompt" in record:
        text["negative_prompt"] = record["negative_prompt"]
    return text
