"""The ``--method`` registry: one line per method, each a spec declared beside its method (:mod:`attnctl.methods`).

Adding a method: write its spec module in ``attnctl/methods/`` (params, mapping to the pipeline, records) and add
its ``SPEC`` here. The batch CLI (job fields, ``--help``), the UI and docs/cli.md's field table all read it.
"""

from __future__ import annotations

from attnctl.methods import attend_excite, compose, freeswim, plain, regional, structured, syngen
from attnctl.spec import Converter, MethodSpec, MethodUnavailable, field_kinds

#: Every ``--method``, in ``--help`` order.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec for spec in (
        plain.SPEC, structured.SPEC, attend_excite.SPEC, syngen.SPEC, compose.SPEC, regional.SPEC, freeswim.SPEC
    )
}
#: Every job field any method reads, with its param (a job file may drive several methods).
FIELDS = field_kinds(METHODS)

__all__ = ["FIELDS", "METHODS", "Converter", "MethodSpec", "MethodUnavailable"]
