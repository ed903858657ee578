"""Job fields: each is a param of a method spec (:mod:`attnctl.spec`), validated by its kind.

The same validation checks a ``.jsonl`` line, a ``.txt`` prompt and the run-level defaults given on the command
line (``--steps``, ``--set FIELD=VALUE``), and the UI checks its controls with the same kinds, so one field
means one thing everywhere. Errors are ``ValueError``s naming the field, the value and what to write instead.
"""

from __future__ import annotations

import difflib
from typing import Any

from .methods import FIELDS

__all__ = ["FIELDS", "validate_field"]


def validate_field(name: str, value: Any) -> Any:
    """The normalised value of field ``name``; unknown names get a did-you-mean hint."""
    param = FIELDS.get(name)
    if param is None:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(FIELDS)}"
        raise ValueError(f"unknown field {name!r}{hint}")
    return param.validate(value)
