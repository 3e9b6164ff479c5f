"""The canvas every figure is drawn on and saved from: the evaluators' figures (each
beside its evaluator) and the aggregate figures of :mod:`jaxhybrid.tools.figures`.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, not through
pyplot: no global backend switch, no global figure registry, nothing left open. Each
figure is one small PNG (dpi :data:`DPI`) written by :func:`save_figure` to a local path
or any `etils.epath` location (e.g. gs://). In a multi-process run only process 0 renders
and writes the PNG (the others return at once), so hosts never race on the same files.
"""

from __future__ import annotations

import io
import os

import jax
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas, ``width`` × ``height`` inches at :data:`DPI`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path) -> str:
    """Write ``fig`` as PNG to ``path`` (local or epath; process 0 only); returns path."""
    path = os.fspath(path)
    if jax.process_index() == 0:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=DPI, format="png")
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.getvalue())
    fig.clear()  # release the artists; the figure is not registered with pyplot
    return path


def distinct_colours(labels: list) -> dict:
    """{label: colour}, a different colour for each label: tab10 up to 10 labels, tab20
    up to 20, else evenly spaced hues."""
    from matplotlib import colormaps
    n = len(labels)
    if n <= 10:
        colours = [f"C{i}" for i in range(n)]
    elif n <= 20:
        colours = [colormaps["tab20"](i) for i in range(n)]
    else:
        colours = [colormaps["hsv"](i / n) for i in range(n)]
    return dict(zip(labels, colours))


def add_legends(fig: Figure, axes, *, shared: bool = False, **legend_kwargs) -> None:
    """A legend in each of ``axes`` that has labelled artists or, ``shared``, one legend
    of every label (each once) below the panels; then lays the figure out."""
    if not shared:
        for ax in axes:
            if ax.get_legend_handles_labels()[1]:
                ax.legend(**legend_kwargs)
        fig.tight_layout()
        return
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        fig.tight_layout()
        return
    kwargs = {k: v for k, v in legend_kwargs.items() if k not in ("loc", "bbox_to_anchor")}
    ncol = min(4, len(entries))
    rows = -(-len(entries) // ncol)
    bottom = min(0.5, (0.18 * rows + 0.12) / fig.get_figheight())
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=ncol,
               **kwargs)
    fig.tight_layout(rect=(0, bottom, 1, 1))
