"""Typed, pure, invertible image transforms, and parsing of the original fnet transform strings.

Arrays are channel-first float arrays ``(C, Z, Y, X)`` (3D) or ``(C, Y, X)`` (2D). Every
transform acts on each channel separately, over the spatial axes only, and returns float32.

Each transform is a frozen pydantic model whose ``name`` field is the discriminator of the
:data:`Transform` union, so a list of transforms is plain JSON (``Pipeline.to_json``) and
is validated strictly when read back (:func:`transform_from_dict`, ``Pipeline.from_json``).

Every transform has

* ``apply(x, *, pixel_sizes=None) -> (y, info)``: ``info`` (:class:`InverseInfo`) holds
  what the inverse needs (spatial shapes, per-channel statistics, pad widths ...);
* ``invert(y, info) -> x``: the inverse. Geometric inverses depend only on the spatial
  shape, so ``y`` may have a different number of channels than ``x`` had (a prediction
  with ``C_out`` channels is brought back onto the input's grid);
* ``is_geometric`` (class attribute): True when the transform changes the grid
  (resize, pad, crop), False for intensity transforms (normalize, clip).

:func:`parse_fnet_transform` turns the strings of the original pytorch_fnet
``train_options.json`` (``"fnet.transforms.Resizer((1, 0.37241, 0.37241))"`` ...) into
typed transforms. It parses with :mod:`ast` and only accepts literal arguments; it never
evaluates the text.
"""

from __future__ import annotations

import abc
import ast
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
import scipy.ndimage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labelfree_jax.core.errors import ConfigError, InputError

__all__ = [
    "InverseInfo",
    "Normalize",
    "NormAroundCenter",
    "Resize",
    "PadToMultiple",
    "CropToMultiple",
    "Clip",
    "Transform",
    "TRANSFORM_REGISTRY",
    "transform_from_dict",
    "Pipeline",
    "PipelineState",
    "parse_fnet_transform",
    "validate_image_array",
]

logger = logging.getLogger(__name__)

# Numbers in transform configs are taken as they are: no "16" → 16 or True → 1 coercion.
_Float = Annotated[float, Field(strict=True)]

_SPATIAL_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


# ----------------------------------------------------------------------------- helpers


def validate_image_array(x: Any, *, what: str = "input") -> np.ndarray:
    """Check a channel-first image array and return it as a float32 array.

    Args:
        x: array ``(C, Z, Y, X)`` or ``(C, Y, X)``, any real numeric dtype.
        what: how to name the array in error messages.

    Returns:
        ``x`` as float32 (a copy only when a conversion is needed).

    Raises:
        InputError: wrong number of dimensions, an empty axis, a non-numeric dtype, or
            NaN/Inf values.
    """
    arr = np.asarray(x)
    if arr.ndim not in (3, 4):
        raise InputError(
            f"{what} must be channel-first (C, Z, Y, X) or (C, Y, X) with 3 or 4 dimensions; "
            f"got shape {arr.shape} ({arr.ndim} dimensions)"
        )
    if arr.size == 0:
        raise InputError(f"{what} has an empty axis: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise InputError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise InputError(f"{what} with shape {arr.shape} contains {n_bad} NaN/Inf values")
    return arr.astype(np.float32, copy=False)


def _spatial_names(n_spatial: int) -> tuple[str, ...]:
    return _SPATIAL_NAMES[n_spatial]


def _check_inverse_input(y: Any, info: InverseInfo) -> np.ndarray:
    """Validate ``y`` against the spatial shape ``info`` says the forward pass produced."""
    arr = np.asarray(y)
    n_spatial = len(info.shape_out)
    if arr.ndim != n_spatial + 1:
        raise InputError(
            f"cannot invert '{info.name}': expected a channel-first array with {n_spatial} "
            f"spatial axes (shape (C, {', '.join(map(str, info.shape_out))})); got shape {arr.shape}"
        )
    if tuple(arr.shape[1:]) != tuple(info.shape_out):
        raise InputError(
            f"cannot invert '{info.name}': spatial shape {tuple(arr.shape[1:])} differs from "
            f"the transform's output spatial shape {tuple(info.shape_out)}"
        )
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise InputError(f"cannot invert '{info.name}': array dtype {arr.dtype} is not numeric")
    return arr.astype(np.float32, copy=False)


def _selected_axes(axes: tuple[str, ...] | None, n_spatial: int) -> list[int]:
    """Indices (into the spatial axes) that a pad/crop acts on; absent letters are ignored."""
    names = _spatial_names(n_spatial)
    if axes is None:
        return list(range(n_spatial))
    return [i for i, n in enumerate(names) if n in axes]


def _zoom_to_shape(x: np.ndarray, out_shape: Sequence[int], order: int) -> np.ndarray:
    """Spline-resample each channel of ``x`` (C, *spatial) to exactly ``out_shape`` (spatial).

    Uses :func:`scipy.ndimage.zoom` (``mode='nearest'``, corner-aligned grid, as the
    original fnet ``Resizer``). Passing ``out/in`` as the factor makes scipy's
    ``round(in * factor)`` equal to ``out`` exactly, and scipy recomputes the sampling
    step from the two shapes, so this is "zoom to this exact shape".
    """
    in_shape = x.shape[1:]
    factors = [o / i for o, i in zip(out_shape, in_shape)]
    out = np.empty((x.shape[0], *out_shape), dtype=np.float32)
    for c in range(x.shape[0]):
        out[c] = scipy.ndimage.zoom(x[c], factors, order=order, mode="nearest")
    return out


def _pixel_size_tuple(pixel_sizes: Mapping[str, float] | None, n_spatial: int, what: str) -> tuple[float, ...]:
    names = _spatial_names(n_spatial)
    if pixel_sizes is None:
        raise InputError(
            f"{what}: the image has no pixel sizes in its metadata; give source_pixel_size "
            f"in the transform or pass pixel_sizes={{{', '.join(repr(n) + ': ...' for n in names)}}}"
        )
    missing = [n for n in names if n not in pixel_sizes or pixel_sizes[n] is None]
    if missing:
        raise InputError(
            f"{what}: pixel sizes {dict(pixel_sizes)} lack axes {missing} (need {list(names)} in µm)"
        )
    values = tuple(float(pixel_sizes[n]) for n in names)
    for n, v in zip(names, values):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{what}: pixel size for '{n}' must be a positive number of µm; got {v}")
    return values


# ----------------------------------------------------------------------------- inverse info


@dataclass(frozen=True)
class InverseInfo:
    """What a transform's inverse needs, recorded by ``apply``.

    Attributes:
        name: the transform's ``name``.
        shape_in: spatial shape of the input (``(Z, Y, X)`` or ``(Y, X)``).
        shape_out: spatial shape of the output.
        mean: per-channel mean that was subtracted (intensity transforms), else None.
        std: per-channel standard deviation that was divided by, else None.
        pad_width: per spatial axis ``(before, after)`` pixels added (pad) or removed (crop).
    """

    name: str
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pad_width: tuple[tuple[int, int], ...] | None = None


# ----------------------------------------------------------------------------- transforms


class _TransformBase(BaseModel):
    """Shared machinery: validation of the input, and the ``apply`` / ``invert`` protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    is_geometric: ClassVar[bool] = False

    def apply(
        self, x: np.ndarray, *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, InverseInfo]:
        """Apply the transform to ``x`` (C, Z, Y, X) or (C, Y, X).

        Args:
            x: channel-first image, real numbers, no NaN/Inf.
            pixel_sizes: µm per pixel ``{"z": .., "y": .., "x": ..}`` of ``x`` (only used by
                :class:`Resize` with pixel sizes).

        Returns:
            ``(y, info)``: ``y`` float32 channel-first, ``info`` for :meth:`invert`.
        """
        arr = validate_image_array(x, what=f"input of transform '{self.name}'")
        return self._apply(arr, pixel_sizes)

    def invert(self, y: np.ndarray, info: InverseInfo) -> np.ndarray:
        """Undo the transform on ``y`` (C', *spatial out) → (C', *spatial in), float32."""
        if not isinstance(info, InverseInfo) or info.name != self.name:
            raise InputError(
                f"cannot invert '{self.name}' with the inverse information of "
                f"'{getattr(info, 'name', type(info).__name__)}'"
            )
        arr = _check_inverse_input(y, info)
        return self._invert(arr, info)

    def output_spatial_shape(
        self, spatial_shape: Sequence[int], *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[int, ...]:
        """Spatial shape of the output for an input of spatial shape ``spatial_shape``."""
        return tuple(int(s) for s in spatial_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``name`` plus every parameter); :func:`transform_from_dict` reads it."""
        return self.model_dump(mode="json")

    # subclasses implement these on validated float32 input (pydantic's metaclass is an ABCMeta)
    @abc.abstractmethod
    def _apply(self, x: np.ndarray, pixel_sizes: Mapping[str, float] | None) -> tuple[np.ndarray, InverseInfo]:
        """Transform validated float32 ``x`` (C, *spatial); return the result and its inverse info."""

    @abc.abstractmethod
    def _invert(self, y: np.ndarray, info: InverseInfo) -> np.ndarray:
        """Undo :meth:`_apply` on ``y`` using ``info``."""


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


def _check_positive_tuple(v: tuple[float, ...] | None, what: str) -> tuple[float, ...] | None:
    if v is None:
        return v
    if len(v) not in (2, 3):
        raise ValueError(f"{what} needs 2 (YX) or 3 (ZYX) values; got {len(v)}")
    for f in v:
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"{what} values must be positive and finite; got {tuple(v)}")
    return v


class Resize(_TransformBase):
    """Spline resampling of the spatial axes (the original fnet ``Resizer``).

    Give exactly one of

    * ``zoom``: factors per spatial axis, ZYX for 3D (e.g. ``(1, 0.37241, 0.37241)``) or YX
      for 2D; output side = ``round(side * factor)`` as :func:`scipy.ndimage.zoom`;
    * ``target_pixel_size`` (µm, same axis order), with ``source_pixel_size`` either given
      here or taken at apply time from ``apply(x, pixel_sizes={"z":..,"y":..,"x":..})``
      (the image's metadata); factor = source / target.

    ``order`` is the spline order (0-5; 3 as the original). Boundary mode is ``'nearest'``.
    The inverse resamples back to exactly the original spatial shape.
    """

    name: Literal["resize"] = "resize"
    zoom: tuple[_Float, ...] | None = None
    source_pixel_size: tuple[_Float, ...] | None = None
    target_pixel_size: tuple[_Float, ...] | None = None
    order: int = Field(3, ge=0, le=5, strict=True)
    is_geometric: ClassVar[bool] = True

    @field_validator("zoom", "source_pixel_size", "target_pixel_size")
    @classmethod
    def _positive(cls, v, info):
        return _check_positive_tuple(v, info.field_name)

    @model_validator(mode="after")
    def _one_way(self):
        if self.zoom is not None:
            if self.source_pixel_size is not None or self.target_pixel_size is not None:
                raise ValueError(
                    "give either zoom or pixel sizes (target_pixel_size, optional "
                    "source_pixel_size), not both"
                )
        elif self.target_pixel_size is None:
            if self.source_pixel_size is not None:
                raise ValueError("source_pixel_size given without target_pixel_size")
            raise ValueError("give zoom, or target_pixel_size (with optional source_pixel_size)")
        elif self.source_pixel_size is not None and len(self.source_pixel_size) != len(self.target_pixel_size):
            raise ValueError(
                f"source_pixel_size {self.source_pixel_size} and target_pixel_size "
                f"{self.target_pixel_size} have different lengths"
            )
        return self

    def factors(self, n_spatial: int, pixel_sizes: Mapping[str, float] | None = None) -> tuple[float, ...]:
        """Zoom factor per spatial axis for an image with ``n_spatial`` spatial axes."""
        if self.zoom is not None:
            factors = self.zoom
            what = "zoom"
        else:
            assert self.target_pixel_size is not None
            target = self.target_pixel_size
            if len(target) != n_spatial:
                raise InputError(
                    f"resize: target_pixel_size {target} has {len(target)} values but the image has "
                    f"{n_spatial} spatial axes ({''.join(_spatial_names(n_spatial)).upper()})"
                )
            if self.source_pixel_size is not None:
                source = self.source_pixel_size
            else:
                source = _pixel_size_tuple(pixel_sizes, n_spatial, "resize")
            factors = tuple(s / t for s, t in zip(source, target))
            what = "source_pixel_size"
        if len(factors) != n_spatial:
            raise InputError(
                f"resize: {what} has {len(factors)} values but the image has {n_spatial} spatial "
                f"axes ({''.join(_spatial_names(n_spatial)).upper()})"
            )
        return tuple(float(f) for f in factors)

    def output_spatial_shape(self, spatial_shape, *, pixel_sizes=None):
        factors = self.factors(len(spatial_shape), pixel_sizes)
        out = tuple(int(round(s * f)) for s, f in zip(spatial_shape, factors))
        if min(out) < 1:
            raise InputError(
                f"resize: spatial shape {tuple(spatial_shape)} with factors {factors} would give "
                f"an empty axis {out}"
            )
        return out

    def _apply(self, x, pixel_sizes):
        shape_in = tuple(x.shape[1:])
        shape_out = self.output_spatial_shape(shape_in, pixel_sizes=pixel_sizes)
        y = _zoom_to_shape(x, shape_out, self.order)
        return y, InverseInfo(self.name, shape_in, shape_out)

    def _invert(self, y, info):
        return _zoom_to_shape(y, info.shape_in, self.order)


def _validate_axes_letters(v: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if v is None:
        return v
    if len(v) == 0:
        raise ValueError("axes must name at least one of 'z', 'y', 'x' (or be null for all)")
    bad = [a for a in v if a not in ("z", "y", "x")]
    if bad:
        raise ValueError(f"axes may only contain 'z', 'y', 'x'; got {bad}")
    if len(set(v)) != len(v):
        raise ValueError(f"axes has repeated letters: {v}")
    return v


class PadToMultiple(_TransformBase):
    """Pad spatial sides up to the next multiple of ``multiple`` (split evenly, extra after).

    ``axes`` restricts padding to some of ``"z"``, ``"y"``, ``"x"`` (letters absent from a
    2D image are ignored); None pads every spatial axis. ``mode`` is a :func:`numpy.pad`
    mode; ``"reflect"`` on a side shorter than the pad uses numpy's repeated mirror
    extension (a side of length 1 is repeated, as ``"edge"``), so it never fails.
    ``"constant"`` pads with 0. The inverse crops the padding away exactly.
    """

    name: Literal["pad_to_multiple"] = "pad_to_multiple"
    multiple: int = Field(16, ge=1, strict=True)
    mode: Literal["reflect", "edge", "constant"] = "reflect"
    axes: tuple[Literal["z", "y", "x"], ...] | None = None
    is_geometric: ClassVar[bool] = True

    @field_validator("axes")
    @classmethod
    def _axes(cls, v):
        return _validate_axes_letters(v)

    def pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` per spatial axis."""
        sel = _selected_axes(self.axes, len(spatial_shape))
        out = []
        for i, s in enumerate(spatial_shape):
            total = (-int(s)) % self.multiple if i in sel else 0
            out.append((total // 2, total - total // 2))
        return tuple(out)

    def output_spatial_shape(self, spatial_shape, *, pixel_sizes=None):
        return tuple(int(s) + a + b for s, (a, b) in zip(spatial_shape, self.pad_width(spatial_shape)))

    def _apply(self, x, pixel_sizes):
        shape_in = tuple(x.shape[1:])
        pw = self.pad_width(shape_in)
        y = x
        if any(a or b for a, b in pw):
            y = np.pad(x, ((0, 0),) + pw, mode=self.mode)
        shape_out = tuple(y.shape[1:])
        return y.astype(np.float32, copy=False), InverseInfo(self.name, shape_in, shape_out, pad_width=pw)

    def _invert(self, y, info):
        assert info.pad_width is not None
        sl = tuple(slice(a, n - b) for (a, b), n in zip(info.pad_width, info.shape_out))
        return np.ascontiguousarray(y[(slice(None),) + sl])


class CropToMultiple(_TransformBase):
    """Centre-crop spatial sides down to a multiple of ``multiple`` (extra pixel removed after).

    ``axes`` restricts cropping as in :class:`PadToMultiple`. A side shorter than
    ``multiple`` raises :class:`InputError`. The inverse pads back to the original shape
    with ``"edge"`` mode: the cropped border has no prediction of its own, it repeats the
    nearest predicted pixel.
    """

    name: Literal["crop_to_multiple"] = "crop_to_multiple"
    multiple: int = Field(16, ge=1, strict=True)
    axes: tuple[Literal["z", "y", "x"], ...] | None = None
    is_geometric: ClassVar[bool] = True

    @field_validator("axes")
    @classmethod
    def _axes(cls, v):
        return _validate_axes_letters(v)

    def crop_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` pixels removed per spatial axis."""
        names = _spatial_names(len(spatial_shape))
        sel = _selected_axes(self.axes, len(spatial_shape))
        out = []
        for i, s in enumerate(spatial_shape):
            if i in sel:
                if s < self.multiple:
                    raise InputError(
                        f"crop_to_multiple: axis '{names[i]}' has {s} pixels, fewer than "
                        f"multiple={self.multiple}; cannot crop it (use pad_to_multiple instead)"
                    )
                total = int(s) % self.multiple
            else:
                total = 0
            out.append((total // 2, total - total // 2))
        return tuple(out)

    def output_spatial_shape(self, spatial_shape, *, pixel_sizes=None):
        return tuple(int(s) - a - b for s, (a, b) in zip(spatial_shape, self.crop_width(spatial_shape)))

    def _apply(self, x, pixel_sizes):
        shape_in = tuple(x.shape[1:])
        cw = self.crop_width(shape_in)
        sl = tuple(slice(a, n - b) for (a, b), n in zip(cw, shape_in))
        y = np.ascontiguousarray(x[(slice(None),) + sl])
        return y, InverseInfo(self.name, shape_in, tuple(y.shape[1:]), pad_width=cw)

    def _invert(self, y, info):
        assert info.pad_width is not None
        if any(a or b for a, b in info.pad_width):
            y = np.pad(y, ((0, 0),) + tuple(info.pad_width), mode="edge")
        return y.astype(np.float32, copy=False)


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


Transform = Annotated[
    Union[Normalize, NormAroundCenter, Resize, PadToMultiple, CropToMultiple, Clip],
    Field(discriminator="name"),
]
"""Any transform; the ``name`` field selects the class."""

TRANSFORM_REGISTRY: dict[str, type[_TransformBase]] = {
    "normalize": Normalize,
    "norm_around_center": NormAroundCenter,
    "resize": Resize,
    "pad_to_multiple": PadToMultiple,
    "crop_to_multiple": CropToMultiple,
    "clip": Clip,
}
"""The fixed registry: transform name → class."""


def _format_validation_error(name: str, cls: type[BaseModel], err: ValidationError) -> str:
    allowed = [f for f in cls.model_fields if f != "name"]
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(transform)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown parameter '{loc}'")
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})" if e["loc"] else msg)
    return (
        f"invalid transform '{name}': " + "; ".join(parts) + f". Parameters of '{name}': "
        + (", ".join(allowed) if allowed else "none")
    )


def transform_from_dict(d: Mapping[str, Any]) -> Transform:
    """Build a transform from its dict form ``{"name": ..., **parameters}`` (strict).

    Raises:
        ConfigError: not a dict, no/unknown ``name`` (the message lists the known names),
            unknown or invalid parameters (the message names them).
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"a transform must be a dict with a 'name'; got {type(d).__name__}: {d!r}")
    name = d.get("name")
    if not isinstance(name, str) or name not in TRANSFORM_REGISTRY:
        known = ", ".join(sorted(TRANSFORM_REGISTRY))
        if name is None:
            raise ConfigError(f"transform {dict(d)!r} has no 'name'; known transforms: {known}")
        raise ConfigError(f"unknown transform {name!r}; known transforms: {known}")
    cls = TRANSFORM_REGISTRY[name]
    try:
        return cls.model_validate(dict(d))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(name, cls, err)) from None


# ----------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PipelineState:
    """What :meth:`Pipeline.invert` needs: one :class:`InverseInfo` per step, in order.

    Attributes:
        infos: the steps' inverse information.
        input_shape: full shape ``(C, *spatial)`` of the pipeline's input.
        output_shape: full shape of the pipeline's output.
    """

    infos: tuple[InverseInfo, ...]
    input_shape: tuple[int, ...] = field(default=())
    output_shape: tuple[int, ...] = field(default=())


class Pipeline(BaseModel):
    """An ordered list of transforms, applied first to last and inverted last to first.

    ``Pipeline.from_json([{"name": "normalize"}, {"name": "pad_to_multiple"}])`` builds
    one; ``to_json()`` gives the same list back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[Transform, ...] = ()

    @classmethod
    def from_json(cls, items: Sequence[Mapping[str, Any]] | None) -> Pipeline:
        """Build from a list of transform dicts (strict; errors name the step index)."""
        if items is None:
            return cls()
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise ConfigError(f"a transform pipeline must be a list of transform dicts; got {items!r}")
        steps = []
        for i, d in enumerate(items):
            try:
                steps.append(transform_from_dict(d))
            except ConfigError as err:
                raise ConfigError(f"transform #{i}: {err}") from None
        return cls(steps=tuple(steps))

    @classmethod
    def from_fnet(cls, text: str | Sequence[str]) -> Pipeline:
        """Build from original fnet transform string(s) (see :func:`parse_fnet_transform`)."""
        return cls(steps=tuple(parse_fnet_transform(text)))

    def to_json(self) -> list[dict[str, Any]]:
        """List of JSON-ready transform dicts (``from_json`` of it gives an equal pipeline)."""
        return [s.to_dict() for s in self.steps]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def is_geometric(self) -> bool:
        """True when any step changes the grid."""
        return any(s.is_geometric for s in self.steps)

    def apply(
        self, x: np.ndarray, *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, PipelineState]:
        """Apply every step to ``x`` (C, Z, Y, X) / (C, Y, X); returns float32 and the state.

        ``pixel_sizes`` (µm, of ``x``) is passed to the steps; after a :class:`Resize` the
        pixel sizes passed on are scaled by its factors.
        """
        arr = validate_image_array(x, what="pipeline input")
        input_shape = tuple(arr.shape)
        infos = []
        ps = dict(pixel_sizes) if pixel_sizes is not None else None
        for step in self.steps:
            arr, info = step._apply(arr, ps)
            infos.append(info)
            if isinstance(step, Resize) and ps is not None:
                names = _spatial_names(arr.ndim - 1)
                factors = [o / i for o, i in zip(info.shape_out, info.shape_in)]
                ps = {**ps, **{n: ps[n] / f for n, f in zip(names, factors) if n in ps}}
        return arr.astype(np.float32, copy=False), PipelineState(tuple(infos), input_shape, tuple(arr.shape))

    def invert(self, y: np.ndarray, state: PipelineState, *, geometric_only: bool = False) -> np.ndarray:
        """Undo the steps in reverse order.

        Args:
            y: array (C', *spatial of the pipeline output); C' may differ from the input's
                channel count when ``geometric_only`` (or when there are no intensity steps).
            state: from :meth:`apply`.
            geometric_only: skip intensity inverses (normalize, clip): brings a prediction
                back to the input grid without un-normalizing it with the input statistics.

        Returns:
            float32 array (C', *spatial of the pipeline input).
        """
        if not isinstance(state, PipelineState) or len(state.infos) != len(self.steps):
            raise InputError(
                f"pipeline state does not belong to this pipeline ({len(self.steps)} steps; state has "
                f"{len(getattr(state, 'infos', ()))})"
            )
        out = y
        for step, info in zip(reversed(self.steps), reversed(state.infos)):
            if geometric_only and not step.is_geometric:
                continue
            out = step.invert(out, info)
        return np.asarray(out, dtype=np.float32)

    def output_shape(
        self, spatial_shape: Sequence[int], *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[int, ...]:
        """Spatial shape after the pipeline, for an input of spatial shape ``spatial_shape``."""
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) not in (2, 3):
            raise InputError(f"spatial shape must have 2 or 3 axes; got {shape}")
        ps = dict(pixel_sizes) if pixel_sizes is not None else None
        for step in self.steps:
            new = step.output_spatial_shape(shape, pixel_sizes=ps)
            if isinstance(step, Resize) and ps is not None:
                names = _spatial_names(len(shape))
                ps = {**ps, **{n: ps[n] * i / o for n, i, o in zip(names, shape, new) if n in ps}}
            shape = new
        return shape


# ----------------------------------------------------------------------------- fnet strings

# Original signatures (pytorch_fnet fnet/transforms.py): parameter names and defaults.
_FNET_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "Normalize": [("per_dim", None)],
    "ToFloat": [],
    "Resizer": [("factors", ...), ("per_dim", None)],
    "Capper": [("low", None), ("hi", None)],
    "Propper": [("action", "-")],  # plus the Padder / Cropper keywords
    "Padder": [("padding", "+"), ("by", 16), ("mode", "constant")],
    "Cropper": [
        ("cropping", "-"),
        ("by", 16),
        ("offset", "mid"),
        ("n_max_pixels", 9732096),
        ("dims_no_crop", None),
    ],
}
_FNET_FUNCTIONS = ("normalize", "norm_around_center", "do_nothing")
_FNET_PREFIXES = ("", "fnet.transforms.", "transforms.")


def _fnet_supported() -> str:
    return ", ".join(
        [f"fnet.transforms.{f}" for f in _FNET_FUNCTIONS]
        + [f"fnet.transforms.{c}(...)" for c in _FNET_SIGNATURES]
    )


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _short_name(dotted: str, text: str) -> str:
    for prefix in _FNET_PREFIXES:
        if prefix and dotted.startswith(prefix):
            short = dotted[len(prefix) :]
            break
    else:
        short = dotted
    if "." in short or (short not in _FNET_FUNCTIONS and short not in _FNET_SIGNATURES):
        raise ConfigError(f"unsupported fnet transform {dotted!r} in {text!r}; supported: {_fnet_supported()}")
    return short


def _bind(name: str, call: ast.Call, text: str, extra_keywords: Sequence[str] = ()) -> dict[str, Any]:
    """Bind a call's literal arguments to the original signature of ``name``."""
    params = _FNET_SIGNATURES[name]
    names = [p for p, _ in params]
    bound: dict[str, Any] = {}

    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ConfigError(
                f"fnet transform {name} in {text!r}: arguments must be literals (numbers, strings, "
                f"tuples, lists, None); got {ast.unparse(node)!r}"
            ) from None

    if len(call.args) > len(names):
        raise ConfigError(
            f"fnet transform {name} in {text!r}: takes at most {len(names)} positional arguments "
            f"({', '.join(names) or 'none'}); got {len(call.args)}"
        )
    for p, node in zip(names, call.args):
        if isinstance(node, ast.Starred):
            raise ConfigError(f"fnet transform {name} in {text!r}: *args are not supported")
        bound[p] = literal(node)
    for kw in call.keywords:
        if kw.arg is None:
            raise ConfigError(f"fnet transform {name} in {text!r}: **kwargs are not supported")
        if kw.arg not in names and kw.arg not in extra_keywords:
            raise ConfigError(
                f"fnet transform {name} in {text!r}: unknown argument {kw.arg!r} "
                f"(known: {', '.join(list(names) + list(extra_keywords)) or 'none'})"
            )
        if kw.arg in bound:
            raise ConfigError(f"fnet transform {name} in {text!r}: argument {kw.arg!r} given twice")
        bound[kw.arg] = literal(kw.value)
    for p, default in params:
        if p not in bound:
            if default is ...:
                raise ConfigError(f"fnet transform {name} in {text!r}: missing argument {p!r}")
            bound[p] = default
    return bound


def _make(cls: type[_TransformBase], text: str, **kwargs: Any) -> _TransformBase:
    try:
        return cls(**kwargs)
    except ValidationError as err:
        name = cls.model_fields["name"].default
        raise ConfigError(f"in {text!r}: " + _format_validation_error(name, cls, err)) from None


def _fnet_padder(kw: dict[str, Any], text: str) -> list[Transform]:
    if kw["padding"] != "+":
        raise ConfigError(
            f"in {text!r}: only padding='+' (pad up to a multiple of 'by') is supported; got {kw['padding']!r}"
        )
    if kw["mode"] not in ("reflect", "edge", "constant"):
        raise ConfigError(f"in {text!r}: pad mode {kw['mode']!r} not supported (reflect, edge, constant)")
    return [_make(PadToMultiple, text, multiple=kw["by"], mode=kw["mode"])]


def _fnet_cropper(kw: dict[str, Any], text: str) -> list[Transform]:
    if kw["cropping"] != "-":
        raise ConfigError(
            f"in {text!r}: only cropping='-' (crop down to a multiple of 'by') is supported; got {kw['cropping']!r}"
        )
    if kw["offset"] != "mid":
        raise ConfigError(f"in {text!r}: only offset='mid' (centre crop) is supported; got {kw['offset']!r}")
    if kw["dims_no_crop"] is not None:
        raise ConfigError(
            f"in {text!r}: dims_no_crop is not supported; use crop_to_multiple with axes=[...] instead"
        )
    if kw["n_max_pixels"] is not None:
        logger.info(
            "%s: n_max_pixels=%s (the original's cap on the cropped size) is not reproduced; "
            "prediction here is tiled instead",
            text,
            kw["n_max_pixels"],
        )
    return [_make(CropToMultiple, text, multiple=kw["by"])]


def _parse_node(node: ast.AST, text: str, depth: int) -> list[Transform]:
    if isinstance(node, (ast.List, ast.Tuple)):
        out: list[Transform] = []
        for elt in node.elts:
            out.extend(_parse_node(elt, text, depth))
        return out
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and depth == 0:
        # a list of strings, e.g. the JSON list form, parsed as Python literals
        return _parse_text(node.value, depth + 1)
    if isinstance(node, (ast.Attribute, ast.Name)):
        dotted = _dotted_name(node)
        if dotted is None:
            raise ConfigError(f"not a supported fnet transform expression: {text!r}; supported: {_fnet_supported()}")
        short = _short_name(dotted, text)
        if short == "normalize":
            return [Normalize()]
        if short == "norm_around_center":
            return [NormAroundCenter()]
        if short == "do_nothing":
            return []
        raise ConfigError(f"in {text!r}: {dotted} is a class; write it as a call, e.g. {dotted}(...)")
    if isinstance(node, ast.Call):
        dotted = _dotted_name(node.func)
        if dotted is None:
            raise ConfigError(f"not a supported fnet transform expression: {text!r}; supported: {_fnet_supported()}")
        short = _short_name(dotted, text)
        if short in _FNET_FUNCTIONS:
            raise ConfigError(
                f"in {text!r}: {dotted} is a function; give it without arguments (as 'fnet.transforms.{short}')"
            )
        if short == "Propper":
            kw = _bind("Propper", node, text, extra_keywords=[p for p, _ in _FNET_SIGNATURES["Padder"]] + [
                p for p, _ in _FNET_SIGNATURES["Cropper"]
            ])
            action = kw.pop("action")
            if action in ("+", "pad"):
                allowed = {p for p, _ in _FNET_SIGNATURES["Padder"]}
                target = "Padder"
            elif action in ("-", "crop"):
                allowed = {p for p, _ in _FNET_SIGNATURES["Cropper"]}
                target = "Cropper"
            else:
                raise ConfigError(f"in {text!r}: Propper action must be '+', 'pad', '-' or 'crop'; got {action!r}")
            bad = sorted(set(kw) - allowed)
            if bad:
                raise ConfigError(f"in {text!r}: arguments {bad} are not valid for a {target}")
            full = {p: kw.get(p, d) for p, d in _FNET_SIGNATURES[target]}
            return _fnet_padder(full, text) if target == "Padder" else _fnet_cropper(full, text)
        kw = _bind(short, node, text)
        if short == "Normalize":
            if kw["per_dim"] not in (None, 0):
                raise ConfigError(
                    f"in {text!r}: Normalize(per_dim={kw['per_dim']!r}) not supported (None or 0: per channel)"
                )
            return [Normalize()]
        if short == "ToFloat":
            return []
        if short == "Resizer":
            if kw["per_dim"] is not None:
                raise ConfigError(f"in {text!r}: Resizer per_dim={kw['per_dim']!r} not supported (only None)")
            factors = kw["factors"]
            if not isinstance(factors, (tuple, list)) or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors
            ):
                raise ConfigError(
                    f"in {text!r}: Resizer factors must be a tuple/list of numbers, one per spatial axis "
                    f"(ZYX or YX); got {factors!r}"
                )
            return [_make(Resize, text, zoom=tuple(float(f) for f in factors))]
        if short == "Capper":
            return [_make(Clip, text, low=kw["low"], high=kw["hi"])]
        if short == "Padder":
            return _fnet_padder(kw, text)
        if short == "Cropper":
            return _fnet_cropper(kw, text)
    raise ConfigError(f"not a supported fnet transform expression: {text!r}; supported: {_fnet_supported()}")


def _parse_text(text: str, depth: int) -> list[Transform]:
    stripped = text.strip()
    if not stripped:
        raise ConfigError("empty fnet transform string")
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and all(isinstance(i, str) for i in items) and depth == 0:
            out: list[Transform] = []
            for item in items:
                out.extend(_parse_text(item, depth + 1))
            return out
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"cannot parse fnet transform {text!r}: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ConfigError(f"cannot parse fnet transform {text!r}: {err}") from None
    return _parse_node(tree.body, text, depth)


def parse_fnet_transform(text: str | Sequence[str]) -> list[Transform]:
    """Translate original pytorch_fnet transform string(s) into typed transforms.

    Accepted forms (``fnet.transforms.`` prefix optional): ``normalize``,
    ``norm_around_center`` (→ :class:`NormAroundCenter` with defaults; the original raised
    for fewer than 32 slices, here it falls back to the whole stack with a warning),
    ``do_nothing`` / ``ToFloat()`` (→ nothing), ``Normalize()``, ``Resizer(factors)``
    (→ :class:`Resize` with ``zoom=factors``, ZYX order, spline order 3), ``Capper(low, hi)``
    (→ :class:`Clip`), ``Padder('+', by, mode)`` / ``Propper('+', ...)`` (→
    :class:`PadToMultiple`), ``Cropper('-', by)`` / ``Propper('-', ...)`` / ``Propper()``
    (→ :class:`CropToMultiple`; the original's ``n_max_pixels`` cap is not reproduced).
    Also a Python/JSON list of these, given as one string or as a list of strings; the
    order is kept (the original applied them in the listed order).

    The text is parsed with :mod:`ast`; arguments must be literals; nothing is evaluated.

    Raises:
        ConfigError: unknown names (the message lists the supported ones), non-literal
            arguments, unsupported options, or anything that is not such an expression.
    """
    if isinstance(text, str):
        return _parse_text(text, 0)
    if isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        out: list[Transform] = []
        for t in text:
            out.extend(_parse_text(t, 1))
        return out
    raise ConfigError(f"fnet transforms must be a string or a list of strings; got {text!r}")
