"""Figures of attention probes: per-head maps and per-layer/head entropy and sink share (matplotlib).

The functions build ``matplotlib.figure.Figure`` objects without pyplot, so they work headless and leave no
global state; save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .probes import AttentionProbe

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(rows: int, cols: int, cell: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("attnctl.llm.plots needs matplotlib: pip install 'attnctl[llm]'") from error
    fig = Figure(figsize=(cell * cols, cell * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_attention_maps(
    probe: AttentionProbe,
    text: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Figure:
    """One text's attention maps: a row per layer, a column per head (queries down, keys across)."""
    if not 0 <= text < len(probe.maps):
        raise ValueError(f"text={text} is out of range; the probe holds {len(probe.maps)} texts")
    layers = list(probe.layers if layers is None else layers)
    heads = list(range(probe.maps[text].shape[1]) if heads is None else heads)
    tokens = probe.tokens[text]
    fig, axes = _figure(len(layers), len(heads), cell=max(2.0, 0.25 * len(tokens)))
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = axes[row][col]
            ax.imshow(probe.head_map(text, layer, head).numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(len(tokens)), tokens, fontsize=6, rotation=90)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
    return fig


def plot_head_statistics(probe: AttentionProbe) -> Figure:
    """Two heat maps, layers x heads: mean attention entropy (nats) and attention-sink share, with values."""
    fig, axes = _figure(1, 2, cell=max(3.0, 0.6 * probe.maps[0].shape[1]))
    for ax, (title, values) in zip(
        axes[0], (("entropy (nats)", probe.entropy()), ("sink share", probe.sink_share()))
    ):
        image = ax.imshow(values.numpy(), cmap="magma", aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(probe.layers)), [str(layer) for layer in probe.layers])
        for row in range(values.shape[0]):
            for col in range(values.shape[1]):
                ax.text(
                    col, row, f"{values[row, col]:.2f}", ha="center", va="center", fontsize=7, color="white"
                )
        fig.colorbar(image, ax=ax)
    return fig
