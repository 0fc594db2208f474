"""Calibration of a predicted uncertainty (an SD map) against the observed error (numpy).

A prediction ``mu`` with a predicted standard deviation ``sd`` claims, read as a Gaussian
``N(mu, sd**2)``, that the target lies in the central interval ``mu ± z_p * sd`` with
probability ``p``, where ``z_p = Phi^-1((1 + p) / 2)`` (``z = 0.994`` for 68 %, ``1.960`` for
95 %). This module measures how far that claim holds on held-out data:

* :func:`interval_coverage`: the fraction of pixels with ``|target - mu| <= z_p * sd``
  (observed coverage; a calibrated SD gives ``~p``, an over-confident one less);
* :func:`spearman_r`: Spearman's rank correlation (ties get their average rank); with
  :func:`~labelfree_jax.evaluation.metrics.pearson_r`, how well ``sd`` ranks the pixels by
  ``|error|`` (whether the map points at the wrong places, whatever its scale);
* :func:`calibration_metrics`: both coverages, both correlations, mean SD and RMSE in one dict;
* :func:`calibration_curve` / :func:`plot_calibration_curve`: expected vs observed coverage
  at several levels (the diagonal is perfect calibration).

Arrays are any shape (``(C, Z, Y, X)``, ``(Y, X)`` ...), the same for all three, in the
prediction's units; every pixel counts once. Gaussian quantiles come from the standard
library (:class:`statistics.NormalDist`), so no scipy is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.metrics import pearson_r

__all__ = [
    "DEFAULT_LEVELS",
    "calibration_curve",
    "calibration_metrics",
    "gaussian_z",
    "interval_coverage",
    "plot_calibration_curve",
    "rankdata",
    "spearman_r",
]

log = logging.getLogger(__name__)

#: The coverage levels of :func:`calibration_curve` by default.
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95, 0.99)


def gaussian_z(level: float) -> float:
    """``z`` with ``P(|N(0, 1)| <= z) = level``: the half-width, in SDs, of the central ``level`` interval.

    Raises:
        InputError: ``level`` not in (0, 1).
    """
    level = float(level)
    if not 0.0 < level < 1.0:
        raise InputError(f"coverage level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _triple(prediction: Any, target: Any, sd: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated flat float64 ``(|target - prediction|, sd)``.

    Raises:
        InputError: non-numeric, empty, non-finite, shapes that differ, or a negative SD.
    """
    shape = np.shape(prediction)
    arrays = []
    for what, x in (("prediction", prediction), ("target", target), ("sd", sd)):
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise InputError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
        if arr.size == 0:
            raise InputError(f"{what}: the array is empty (shape {arr.shape})")
        if arr.shape != shape:
            raise InputError(f"{what}: shape {arr.shape} differs from the prediction's {shape}")
        arr = arr.astype(np.float64, copy=False).ravel()
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what}: contains NaN or infinite values")
        arrays.append(arr)
    p, t, s = arrays
    if s.min() < 0:
        raise InputError(f"sd: {int(np.count_nonzero(s < 0))} negative value(s); a standard deviation is >= 0")
    return np.abs(t - p), s


def interval_coverage(prediction: Any, target: Any, sd: Any, level: float = 0.95) -> float:
    """Observed coverage of the central Gaussian ``level`` interval: fraction of pixels with
    ``|target - prediction| <= gaussian_z(level) * sd``.

    Args:
        prediction, target, sd: arrays of one shape (any), prediction units; ``sd >= 0``.
        level: the nominal coverage, in (0, 1) (0.68, 0.95 ...).

    Returns:
        A fraction in [0, 1]; ``~level`` when the SD is calibrated, less when it is too small.

    Raises:
        InputError: see :func:`calibration_metrics`.
    """
    err, s = _triple(prediction, target, sd)
    return float(np.mean(err <= gaussian_z(level) * s))


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of the flattened ``x`` (float64), ties given the average of their ranks (as ``scipy.stats.rankdata``)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    counts = np.diff(np.r_[starts, a.size])
    average = starts + (counts + 1) / 2.0  # the mean of ranks start+1 .. start+count
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(average, counts)
    return ranks


def spearman_r(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two arrays of one shape (flattened): Pearson r of their ranks.

    Returns nan (with a logged warning) when either is constant.

    Raises:
        InputError: see :func:`labelfree_jax.evaluation.metrics.pearson_r`.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"spearman_r: shapes {a.shape} and {b.shape} differ")
    return pearson_r(rankdata(a), rankdata(b))


def calibration_metrics(
    prediction: Any, target: Any, sd: Any, *, levels: Sequence[float] = (0.68, 0.95),
) -> dict[str, float]:
    """How well ``sd`` describes the error of ``prediction`` against ``target``.

    Args:
        prediction, target, sd: arrays of one shape (any; e.g. a test region ``(C, Y, X)``),
            in the prediction's units; ``sd >= 0``.
        levels: nominal coverages to measure.

    Returns:
        ``coverage_68``, ``coverage_95`` (one ``coverage_<100*level>`` per level: observed
        fraction inside ``prediction ± z * sd``), ``pearson_sd_abs_error`` and
        ``spearman_sd_abs_error`` (correlation of ``sd`` with ``|target - prediction|`` over the
        pixels; nan when either is constant), ``mean_sd``, ``rmse`` (root mean squared error),
        ``rms_sd`` (root mean ``sd**2``: equals ``rmse`` for a calibrated SD on average) and ``n``
        (pixels).

    Raises:
        InputError: non-numeric, empty or non-finite arrays, shapes that differ, a negative SD,
            or a level outside (0, 1).
    """
    err, s = _triple(prediction, target, sd)
    out: dict[str, float] = {}
    for level in levels:
        key = f"coverage_{100 * float(level):g}".replace(".", "_")
        out[key] = float(np.mean(err <= gaussian_z(level) * s))
    out["pearson_sd_abs_error"] = pearson_r(s, err)
    out["spearman_sd_abs_error"] = spearman_r(s, err)
    out["mean_sd"] = float(s.mean())
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["rms_sd"] = float(np.sqrt(np.mean(s**2)))
    out["n"] = float(err.size)
    return out


def calibration_curve(
    prediction: Any, target: Any, sd: Any, levels: Sequence[float] = DEFAULT_LEVELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of the central Gaussian intervals at ``levels``.

    Returns:
        ``(expected, observed)``: float64 arrays of ``len(levels)``; ``observed[i]`` is
        :func:`interval_coverage` at ``levels[i]``.

    Raises:
        InputError: see :func:`calibration_metrics`.
    """
    err, s = _triple(prediction, target, sd)
    expected = np.asarray([float(v) for v in levels], dtype=np.float64)
    observed = np.asarray([np.mean(err <= gaussian_z(v) * s) for v in expected], dtype=np.float64)
    return expected, observed


def plot_calibration_curve(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, title: str = "", dpi: int = 120,
) -> Path:
    """A PNG of observed vs expected coverage, one line per entry of ``curves`` (label -> ``(expected, observed)``
    from :func:`calibration_curve`), with the diagonal of perfect calibration. Written atomically.

    Raises:
        InputError: ``curves`` is empty or a curve's two arrays differ in length.
    """
    from labelfree_jax.evaluation.canvas import new_figure, save_png

    if not curves:
        raise InputError(f"{path}: no calibration curve to plot")
    fig = new_figure(4.2, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for label, (expected, observed) in curves.items():
        if len(expected) != len(observed):
            raise InputError(f"{path}: curve {label!r} has {len(expected)} expected and {len(observed)} observed values")
        ax.plot(expected, observed, marker="o", markersize=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage (central Gaussian interval)")
    ax.set_ylabel("observed coverage")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return save_png(fig, path, dpi)
