"""Figures of a training run: the loss curve, from a loss CSV or from arrays.

Headless and atomic like every figure here (:mod:`labelfree_jax.evaluation.canvas`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.canvas import new_figure, save_png

__all__ = ["plot_loss_curve", "smooth"]

log = logging.getLogger(__name__)

_STEP_COLUMNS = ("step", "num_iter", "iteration", "iter", "epoch")

Series = dict[str, tuple[np.ndarray, np.ndarray]]


def _number(cell: str) -> float | None:
    """A finite number from a CSV cell, else None (empty, text, NaN, inf)."""
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _column(rows: list[list[str]], col: int, step_col: int) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the numeric cells of column ``col`` (row index when the step is missing)."""
    steps, vals = [], []
    for i, row in enumerate(rows):
        if col >= len(row):
            continue
        v = _number(row[col])
        s = _number(row[step_col]) if step_col < len(row) else None
        if v is not None:
            steps.append(s if s is not None else float(i))
            vals.append(v)
    return steps, vals


def _read_loss_csv(path: Path) -> Series:
    """Series from a loss CSV: a header row, one step column, one column per loss series."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise InputError(f"{path}: cannot read the loss CSV ({err})") from err
    if len(rows) < 2:
        raise InputError(f"{path}: the loss CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    step_col = next((lower.index(c) for c in _STEP_COLUMNS if c in lower), 0)
    series: Series = {}
    for col, name in enumerate(header):
        if col == step_col:
            continue
        steps, vals = _column(rows[1:], col, step_col)
        if vals:
            series[name] = (np.asarray(steps), np.asarray(vals))
    if not series:
        raise InputError(f"{path}: no numeric loss column besides the step column {header[step_col]!r}")
    return series


def _series_from_mapping(source: Mapping) -> Series:
    out = {}
    for name, val in source.items():
        if isinstance(val, tuple) and len(val) == 2:
            steps, vals = (np.asarray(v, dtype=np.float64).ravel() for v in val)
        else:
            vals = np.asarray(val, dtype=np.float64).ravel()
            steps = np.arange(vals.size, dtype=np.float64)
        if steps.shape != vals.shape:
            raise InputError(f"loss series {name!r}: {steps.size} steps but {vals.size} values")
        keep = np.isfinite(vals) & np.isfinite(steps)
        if keep.any():
            out[str(name)] = (steps[keep], vals[keep])
    if not out:
        raise InputError("plot_loss_curve: no finite loss values given")
    return out


def _series_from(source: Any) -> tuple[Series, str | None]:
    """The loss series of ``source`` and a default title (the CSV's file name)."""
    if isinstance(source, (str, Path)):
        return _read_loss_csv(Path(source)), Path(source).name
    if isinstance(source, Mapping):
        return _series_from_mapping(source), None
    raise InputError(
        "plot_loss_curve: expected a CSV path or a mapping name -> values or (steps, values), "
        f"got {type(source).__name__}"
    )


def smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing) of a 1D series.

    ``span``: the EMA's span in samples (weight ``2 / (span + 1)`` on the newest value); the
    first values are corrected for the zero start, so the curve does not rise from 0.
    """
    alpha = 2.0 / (max(int(span), 1) + 1.0)
    out = np.empty(len(values), dtype=np.float64)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(np.asarray(values, dtype=np.float64)):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


#: Series with more points than this are drawn faint, with a smoothed line on top.
SMOOTH_ABOVE = 30


def _is_correlation(name: str) -> bool:
    lowered = name.lower()
    return "pearson" in lowered or lowered.endswith("_r") or lowered == "r"


def _draw_losses(ax, series: Series) -> None:
    for name, (steps, vals) in series.items():
        if vals.size > SMOOTH_ABOVE:
            (raw,) = ax.plot(steps, vals, linewidth=0.6, alpha=0.25)
            ax.plot(steps, smooth(vals, max(5, vals.size // 15)), color=raw.get_color(), linewidth=1.6,
                    label=f"{name} (smoothed; raw faint)")
        else:
            ax.plot(steps, vals, marker="o", markersize=3, linewidth=1.2, label=name)


def plot_loss_curve(
    source: str | Path | Mapping[str, Any],
    path: str | Path,
    *,
    validation: str | Path | Mapping[str, Any] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Training / validation loss against step (log y when every loss is positive), validation r on a second axis.

    ``source``: a CSV file with a header row -- the step column is the first of ``step``,
    ``num_iter``, ``iteration``, ``iter``, ``epoch`` present (else the first column), every
    other column with numbers is a series (empty cells skipped, e.g. validation loss logged
    every N steps) -- or a mapping ``name -> values`` / ``name -> (steps, values)``.
    ``validation``: an optional second source of the same kind (``validation.csv`` of a run);
    its correlation columns (``*pearson*``, ``*_r``) go on a right-hand axis, its losses
    beside the training loss. A per-step series longer than 30 points is drawn faint with a
    smoothed line (:func:`smooth`) on top, so the trend is readable through the noise.
    Writes a PNG to ``path`` (atomically) and returns it.

    Raises:
        InputError: an unreadable CSV, no numeric loss values, steps and values of different lengths.
    """
    series, default_title = _series_from(source)
    if validation is not None:
        extra, _ = _series_from(validation)
        for name, value in extra.items():
            series.setdefault(name, value)
    losses = {k: v for k, v in series.items() if not _is_correlation(k)}
    correlations = {k: v for k, v in series.items() if _is_correlation(k)}
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    _draw_losses(ax, losses)
    if losses and all(np.all(v > 0) for _, v in losses.values()):
        ax.set_yscale("log")
    else:
        log.info("plot_loss_curve: non-positive losses, using a linear y axis")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if correlations:
        ax_r = ax.twinx()
        for name, (steps, vals) in correlations.items():
            ax_r.plot(steps, vals, color="tab:green", marker="s", markersize=3, linewidth=1.2, label=name)
        ax_r.set_ylabel("Pearson r", color="tab:green")
        ax_r.set_ylim(min(0.0, *(float(v.min()) for _, v in correlations.values())), 1.0)
        more_h, more_l = ax_r.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper right")
    if title or default_title:
        ax.set_title(title or default_title)
    return save_png(fig, path, dpi)
