"""Intensity transforms: per-channel z-scoring (:class:`Normalize`, :class:`NormAroundCenter`), percentile
normalisation (:class:`NormalizePercentile`) and :class:`Clip`.

They keep the grid (``is_geometric = False``). The normalising inverses need the statistics of
the input, so they only invert an array with the input's number of channels.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from labelfree_jax.core.errors import InputError
from labelfree_jax.transforms.base import InverseInfo, _Float, _TransformBase

__all__ = ["NORMALISED_UNITS", "Clip", "NormAroundCenter", "Normalize", "NormalizePercentile"]

#: The transforms that normalise intensities, and the units an image has after each: the one list
#: that prediction checks (is the input normalised?) and provenance (units of a prediction) read.
NORMALISED_UNITS: dict[str, str] = {
    "normalize": "z-score",
    "norm_around_center": "z-score",
    "normalize_percentile": "percentile-normalised (low percentile at 0, high at 1)",
}

logger = logging.getLogger(__name__)


def _zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = (x.astype(np.float64) - mean.reshape(shape)) / std.reshape(shape)
    return out.astype(np.float32)


def _unzscore(name: str, y: np.ndarray, info: InverseInfo) -> np.ndarray:
    assert info.mean is not None and info.std is not None
    if y.shape[0] != len(info.mean):
        raise InputError(
            f"cannot invert '{name}': the array has {y.shape[0]} channels but the statistics were "
            f"taken on {len(info.mean)}; to bring a prediction back to the input grid use "
            f"Pipeline.invert(..., geometric_only=True)"
        )
    shape = (-1,) + (1,) * (y.ndim - 1)
    mean = np.asarray(info.mean, dtype=np.float64).reshape(shape)
    std = np.asarray(info.std, dtype=np.float64).reshape(shape)
    return (y.astype(np.float64) * std + mean).astype(np.float32)


def _channel_stats(x: np.ndarray, region: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) of ``region`` (C, ...); constant channel → InputError."""
    flat = region.reshape(region.shape[0], -1)
    for c in range(flat.shape[0]):
        lo, hi = float(flat[c].min()), float(flat[c].max())
        if lo == hi:
            raise InputError(
                f"{what}: channel {c} is constant (every value is {lo}), so it has standard "
                f"deviation 0 and cannot be z-scored"
            )
    mean = flat.mean(axis=1, dtype=np.float64)
    std = flat.std(axis=1, dtype=np.float64)
    return mean, std


class Normalize(_TransformBase):
    """Z-score each channel over all its pixels: ``(x - mean) / std`` (mean 0, std 1).

    Same as the original ``fnet.transforms.normalize`` (population std, ``ddof=0``).
    A constant channel (std 0) raises :class:`InputError`. Inverse: ``y * std + mean``
    with the input's per-channel statistics (needs the same number of channels).
    """

    name: Literal["normalize"] = "normalize"
    is_geometric: ClassVar[bool] = False

    def _apply(self, x, pixel_sizes):
        mean, std = _channel_stats(x, x, "normalize")
        shape = tuple(x.shape[1:])
        return _zscore(x, mean, std), InverseInfo(
            self.name, shape, shape, tuple(map(float, mean)), tuple(map(float, std))
        )

    def _invert(self, y, info):
        return _unzscore(self.name, y, info)


class NormAroundCenter(_TransformBase):
    """Z-score each channel with the mean/std of its central ``n_slices`` z-slices.

    As the original ``fnet.transforms.norm_around_center``: for ``Z >= n_slices`` the
    statistics come from slices ``[Z//2 - n_slices//2, Z//2 - n_slices//2 + n_slices)``
    and the whole stack is then shifted/scaled by them. When ``Z < n_slices``:
    ``fallback="whole"`` uses the whole stack (logged at warning level; the original
    raised), ``fallback="error"`` raises :class:`InputError`. 2D input (no Z axis) always
    raises :class:`InputError` (use ``normalize`` for 2D images).
    """

    name: Literal["norm_around_center"] = "norm_around_center"
    n_slices: int = Field(32, ge=1, strict=True)
    fallback: Literal["whole", "error"] = "whole"
    is_geometric: ClassVar[bool] = False

    def center_slices(self, n_z: int) -> tuple[int, int]:
        """``(start, stop)`` of the z-slices used for the statistics of a stack of ``n_z`` slices."""
        if n_z < self.n_slices:
            return 0, n_z
        start = n_z // 2 - self.n_slices // 2
        start = min(max(start, 0), n_z - self.n_slices)
        return start, start + self.n_slices

    def _apply(self, x, pixel_sizes):
        if x.ndim != 4:
            raise InputError(
                f"norm_around_center needs a 3D image (C, Z, Y, X); got shape {x.shape} "
                f"(use 'normalize' for 2D images)"
            )
        n_z = x.shape[1]
        if n_z < self.n_slices:
            if self.fallback == "error":
                raise InputError(
                    f"norm_around_center: the image has {n_z} z-slices, fewer than n_slices="
                    f"{self.n_slices} (set fallback='whole' to use the whole stack)"
                )
            logger.warning(
                "norm_around_center: image has %d z-slices < n_slices=%d; using the whole stack",
                n_z,
                self.n_slices,
            )
        start, stop = self.center_slices(n_z)
        mean, std = _channel_stats(x, x[:, start:stop], "norm_around_center")
        shape = tuple(x.shape[1:])
        return _zscore(x, mean, std), InverseInfo(
            self.name, shape, shape, tuple(map(float, mean)), tuple(map(float, std))
        )

    def _invert(self, y, info):
        return _unzscore(self.name, y, info)


class NormalizePercentile(_TransformBase):
    """Map each channel's ``low`` and ``high`` percentiles to 0 and 1: ``(x - v_low) / (v_high - v_low)``.

    The percentile normalisation of CSBDeep / CAREamics (``normalize(x, 1, 99.8)``, without
    clipping; add a ``clip`` step after it to clip). Percentiles are numpy's (linear
    interpolation), per channel over all its pixels.

    * ``statistics="image"`` (default): ``v_low``, ``v_high`` are measured on each image.
    * ``statistics="dataset"``: fixed values, one ``(v_low, v_high)`` pair per channel in
      ``values``, in the units of this step's input. Training fills them in once from the
      training images (:func:`labelfree_jax.training.percentiles.resolve_dataset_percentiles`)
      and the model package records them, so prediction applies the same numbers.

    Inverse: ``y * (v_high - v_low) + v_low`` with the values used forward (needs the same
    number of channels).

    Raises (from :meth:`apply`):
        InputError: a channel whose two percentiles are equal (e.g. constant); dataset
            statistics not filled in yet, or given for another number of channels.
    """

    name: Literal["normalize_percentile"] = "normalize_percentile"
    low: _Float = Field(1.0, ge=0.0, le=100.0)
    high: _Float = Field(99.8, ge=0.0, le=100.0)
    statistics: Literal["image", "dataset"] = "image"
    values: tuple[tuple[_Float, _Float], ...] | None = None
    is_geometric: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.values is not None:
            if self.statistics != "dataset":
                raise ValueError("values are dataset statistics: give them with statistics='dataset'")
            if not self.values:
                raise ValueError("values needs one (low value, high value) pair per channel")
            for c, (lo, hi) in enumerate(self.values):
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise ValueError(f"values of channel {c}: need finite low value < high value, got ({lo}, {hi})")
        return self

    def _channel_values(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(v_low, v_high)`` per channel (float64) for ``x`` (C, *spatial)."""
        if self.statistics == "dataset":
            if self.values is None:
                raise InputError(
                    "normalize_percentile with statistics='dataset' has no values yet: training measures them on "
                    "the training images and the model package records them; outside training give values"
                )
            if len(self.values) != x.shape[0]:
                raise InputError(
                    f"normalize_percentile: the dataset statistics are for {len(self.values)} channel(s) but the "
                    f"image has {x.shape[0]}"
                )
            vals = np.asarray(self.values, np.float64)
            return vals[:, 0], vals[:, 1]
        flat = x.reshape(x.shape[0], -1)
        lo, hi = np.percentile(flat, [self.low, self.high], axis=1)
        for c in range(flat.shape[0]):
            if not hi[c] > lo[c]:
                raise InputError(
                    f"normalize_percentile: channel {c} has the same value ({lo[c]}) at percentiles {self.low} and "
                    f"{self.high} (a constant or nearly constant channel), so it cannot be normalised"
                )
        return lo.astype(np.float64), hi.astype(np.float64)

    def _apply(self, x, pixel_sizes):
        lo, hi = self._channel_values(x)
        shape = tuple(x.shape[1:])
        scale = hi - lo
        return _zscore(x, lo, scale), InverseInfo(
            self.name, shape, shape, tuple(map(float, lo)), tuple(map(float, scale))
        )

    def _invert(self, y, info):
        return _unzscore(self.name, y, info)


class Clip(_TransformBase):
    """Clip intensities to ``[low, high]`` (either bound optional); the original fnet ``Capper``.

    Clipping loses information, so the inverse is the identity.
    """

    name: Literal["clip"] = "clip"
    low: _Float | None = None
    high: _Float | None = None
    is_geometric: ClassVar[bool] = False

    @model_validator(mode="after")
    def _bounds(self):
        for v in (self.low, self.high):
            if v is not None and math.isnan(v):
                raise ValueError("clip bounds must not be NaN")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    def _apply(self, x, pixel_sizes):
        shape = tuple(x.shape[1:])
        y = x
        if self.low is not None or self.high is not None:
            y = np.clip(x, self.low, self.high).astype(np.float32, copy=False)
        return y, InverseInfo(self.name, shape, shape)

    def _invert(self, y, info):
        return y
