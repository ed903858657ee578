"""Which batch rows are which: the parts of a batch, declared once per pass in one way for every method.

A denoiser pass stacks several parts along the batch axis: ``[uncond, cond]`` for classifier-free guidance,
``[composite, reference]`` in PrimeComposer's correlation pass, ``[window, full]`` in FreeSwim's dual pass. A
pipeline declares the layout (a :class:`RowLayout`) on the controller; before every pass the controller
resolves it against that pass's batch size into :class:`BatchRows`, which every attention call of the pass
sees as ``call.rows``. Controls ask ``call.rows["cond"]`` instead of guessing from shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchRows:
    """The named parts of one pass's batch, each a slice of rows, in batch order."""

    size: int
    parts: tuple[tuple[str, slice], ...]

    def __getitem__(self, name: str) -> slice:
        for part, rows in self.parts:
            if part == name:
                return rows
        raise KeyError(f"this pass declares the parts {list(self.names)}, not {name!r}")

    def __contains__(self, name: object) -> bool:
        return any(part == name for part, _ in self.parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(part for part, _ in self.parts)

    def get(self, name: str, default: slice | None = None) -> slice | None:
        return self[name] if name in self else default


# (batch size, branch) -> BatchRows
RowLayout = Callable[[int, "str | None"], BatchRows]


def stacked(*names: str) -> RowLayout:
    """Equal parts stacked in the given order: ``stacked("uncond", "cond")`` is diffusers' guidance batch."""
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be distinct and non-empty, got {names}")

    def layout(batch_size: int, branch: str | None = None) -> BatchRows:
        if batch_size % len(names):
            raise ValueError(f"a batch of {batch_size} rows cannot hold the {len(names)} equal parts {names}")
        part = batch_size // len(names)
        return BatchRows(batch_size, tuple((n, slice(i * part, (i + 1) * part)) for i, n in enumerate(names)))

    return layout


def guidance_rows(cond_rows: int) -> RowLayout:
    """``cond_rows`` conditional rows, preceded by as many unconditional ones when the pass is guided.

    A pass of ``2 * cond_rows`` rows is ``[uncond, cond]`` as diffusers' SD-style pipelines batch it; a pass of
    ``cond_rows`` rows is all conditional (guidance off, skip-layer guidance's extra pass, or after
    ``SDCFGCutoffCallback`` drops the unconditional half), unless it runs in the ``"uncond"`` branch, as the
    second pass of pipelines that run the halves separately (Wan, Flux true CFG). Any other batch size is an
    error, never a guess.
    """
    if cond_rows < 1:
        raise ValueError(f"cond_rows must be >= 1, got {cond_rows}")
    guided = stacked("uncond", "cond")

    def layout(batch_size: int, branch: str | None = None) -> BatchRows:
        if batch_size == 2 * cond_rows:
            return guided(batch_size)
        if batch_size == cond_rows:
            return stacked("uncond" if branch == "uncond" else "cond")(batch_size)
        raise ValueError(
            f"the pipeline declared {cond_rows} conditional rows but the denoiser got a batch of {batch_size}"
        )

    return layout
