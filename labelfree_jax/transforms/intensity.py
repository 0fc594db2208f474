"""Intensity transforms: per-channel z-scoring (:class:`Normalize`, :class:`NormAroundCenter`) and :class:`Clip`.

They keep the grid (``is_geometric = False``). The z-scoring inverses need the statistics of
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

__all__ = ["Clip", "NormAroundCenter", "Normalize"]

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
