"""Headless matplotlib figures: a grid of image panels, grey colour maps, atomic PNG writing.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly --
``matplotlib.pyplot`` (and its global figure registry) is never touched -- and
:func:`save_png` writes the file atomically and clears the figure. matplotlib is imported
only when a figure is made.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from labelfree_jax.core.atomic import atomic_path

__all__ = ["channel_suffix", "gray_cmap", "image_grid", "new_figure", "save_png", "show"]

log = logging.getLogger(__name__)


def new_figure(width_inches: float, height_inches: float):
    """An empty constrained-layout :class:`~matplotlib.figure.Figure` on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_inches, height_inches), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_grid(nrows: int, ncols: int, panel_shape: tuple[int, int], *, panel_inches: float = 3.0):
    """A figure with ``nrows x ncols`` axes (no ticks) sized for panels of ``panel_shape`` (rows, columns) pixels.

    Returns ``(figure, axes)`` with ``axes`` a 2-D array ``(nrows, ncols)``.
    """
    h, w = panel_shape
    aspect = h / max(w, 1)
    fig = new_figure(panel_inches * ncols, panel_inches * aspect * nrows + 0.4 * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def gray_cmap(gap: str = "white"):
    """matplotlib's ``gray`` colour map with NaN (the gaps between views) drawn in ``gap``."""
    from matplotlib import colormaps

    return colormaps["gray"].with_extremes(bad=gap)


def show(ax, img: np.ndarray, title: str, *, cmap=None, vmin=0.0, vmax=1.0):
    """``img`` on ``ax`` (nearest-neighbour, grey by default, ``[vmin, vmax]``) with a small title."""
    im = ax.imshow(img, cmap=cmap if cmap is not None else gray_cmap(), vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return im


def save_png(fig, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically; the figure is cleared even on failure."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        fig.clear()
    log.info("wrote %s", path)
    return path


def channel_suffix(c: int, n: int) -> str:
    """``" ch<c>"`` for a panel title when there are several channels, else ``""``."""
    return f" ch{c}" if n > 1 else ""
