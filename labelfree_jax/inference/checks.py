"""Checks of one input against the model before prediction: refusals and warnings.

:func:`check_size` refuses an image too small to predict. :func:`input_warnings` returns the
assumptions a prediction of this input makes, as messages:

* a single z-plane given to a 3D model (predicted as a 1-slice stack);
* a spatial axis shorter than ``2**depth`` (the network then sees mostly padding: often the
  sign of misread axes, e.g. a channel-last ``(Y, X, 2)`` TIFF read as ``(Z=128, Y=128, X=2)``);
* signal transforms without a normalisation (the input must then be in the training units);
* intensities far from the training signal's (:func:`intensity_warnings`).

The intensity rule (used when the package records ``signal_statistics``: raw training-signal
mean ``m``, standard deviation ``s``, 1st and 99th percentiles ``p1``, ``p99`` per channel):

* **level**: the input's mean must lie in ``[p1 - 3 s, p99 + 3 s]``. 98 % of the training
  pixels lie in ``[p1, p99]``, so an input whose *average* pixel lies outside that range
  widened by three training standard deviations would be an extreme outlier in training: another
  bit depth (8-bit vs 16-bit camera), an offset or background subtraction, or another channel;
* **contrast**: the input's standard deviation must lie within a factor of 10 of ``s``. A
  z-scoring model removes any gain, so this only flags an order-of-magnitude difference
  (another modality, a fluorescence channel given as the signal, a saturated or nearly empty
  image).

Both compare raw file units, are per channel, and only warn: the prediction goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.axes import MIN_SPATIAL_SIZE
from labelfree_jax.transforms.base import spatial_names
from labelfree_jax.transforms.intensity import NORMALISED_UNITS

__all__ = ["CONTRAST_FACTOR", "LEVEL_MARGIN_STDS", "check_size", "input_warnings", "intensity_warnings"]

#: The input mean may lie this many training standard deviations outside [p1, p99].
LEVEL_MARGIN_STDS = 3.0
#: The input standard deviation may differ from the training one by up to this factor.
CONTRAST_FACTOR = 10.0
#: Fewest pixels along Y and X that a prediction makes sense on: the readers' own limit.
MIN_PLANE_SIDE = MIN_SPATIAL_SIZE



def check_size(shape: Sequence[int]) -> None:
    """Refuse an input ``(C, *spatial)`` whose Y or X side is below :data:`MIN_PLANE_SIDE` pixels.

    Raises:
        InputError: naming the shape (e.g. a 1x1x1 TIFF).
    """
    spatial = tuple(int(s) for s in shape[1:])
    if min(spatial[-2:]) < MIN_PLANE_SIDE:
        raise InputError(
            f"the image of spatial shape {spatial} is too small to predict: Y and X need at least "
            f"{MIN_PLANE_SIDE} pixels each"
        )


def _size_warnings(spatial: Sequence[int], nd: int, depth: int) -> list[str]:
    out = []
    m = 2**depth
    for a, side in zip(spatial_names(nd), spatial):
        if nd == 3 and a == "z" and side == 1:
            out.append("a single z-plane was given to a 3D model: predicted as a 1-slice stack (the network was "
                       "trained on z-stacks)")
        elif side < m:
            out.append(f"spatial axis {a} has {side} pixel(s), fewer than 2**depth = {m}: the network sees mostly "
                       "padding; are the axes read right? (pass axes=, --axes, e.g. YXC for channels last)")
    return out


def intensity_warnings(x: np.ndarray, statistics) -> list[str]:
    """Warnings for a raw input ``(C, *spatial)`` far from the training ``statistics`` (see the module docstring).

    ``statistics``: :class:`~labelfree_jax.models.config.IntensityStatistics` or None (no check).
    Channels are compared in order; a different channel count is itself a warning.
    """
    if statistics is None:
        return []
    n = len(statistics.mean)
    if x.shape[0] != n:
        return [(f"the package's signal statistics are for {n} channel(s), the input has {x.shape[0]}; "
                 "intensities not compared")]
    out = []
    for c in range(n):
        flat = np.asarray(x[c], dtype=np.float64).ravel()
        mean, std = float(flat.mean()), float(flat.std())
        t_std, p1, p99 = statistics.std[c], statistics.percentile_1[c], statistics.percentile_99[c]
        lo, hi = p1 - LEVEL_MARGIN_STDS * t_std, p99 + LEVEL_MARGIN_STDS * t_std
        where = f"channel {c}: " if n > 1 else ""
        if not lo <= mean <= hi:
            out.append(f"{where}input mean intensity {mean:.4g} is far outside the training signal's range "
                       f"(1st-99th percentile {p1:.4g}-{p99:.4g}, std {t_std:.4g}): another bit depth, offset or "
                       "channel? The prediction may be meaningless")
        if t_std > 0 and not t_std / CONTRAST_FACTOR <= std <= t_std * CONTRAST_FACTOR:
            out.append(f"{where}input intensity std {std:.4g} differs from the training signal's {t_std:.4g} by "
                       f"more than {CONTRAST_FACTOR:g}x: another modality or channel?")
    return out


def input_warnings(config, x: np.ndarray, nd: int) -> list[str]:
    """The warnings for predicting the raw input ``x`` (``(C, *spatial)``) with a model of ``config``."""
    out = _size_warnings(x.shape[1:], nd, int(config.network.depth))
    steps = tuple(getattr(config, "signal_transforms", ()) or ())
    if not any(getattr(s, "name", "") in NORMALISED_UNITS for s in steps):
        out.append("the package's signal transforms do not normalise intensities: the input must be in the units "
                   "of the training images")
    out += intensity_warnings(x, getattr(config, "signal_statistics", None))
    return out
