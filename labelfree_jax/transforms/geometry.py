"""Geometric transforms: :class:`Resize`, :class:`PadToMultiple`, :class:`CropToMultiple`.

They change the grid (``is_geometric = True``); their inverses depend only on the spatial
shape, so they also bring a prediction with another number of channels back onto the
input's grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import numpy as np
import scipy.ndimage
from pydantic import Field, field_validator, model_validator

from labelfree_jax.core.errors import InputError
from labelfree_jax.transforms.base import InverseInfo, _Float, _TransformBase, spatial_names

__all__ = ["CropToMultiple", "PadToMultiple", "Resize"]


def _selected_axes(axes: tuple[str, ...] | None, n_spatial: int) -> list[int]:
    """Indices (into the spatial axes) that a pad/crop acts on; absent letters are ignored."""
    names = spatial_names(n_spatial)
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
    names = spatial_names(n_spatial)
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
                    f"{n_spatial} spatial axes ({''.join(spatial_names(n_spatial)).upper()})"
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
                f"axes ({''.join(spatial_names(n_spatial)).upper()})"
            )
        return tuple(float(f) for f in factors)

    def output_spatial_shape(self, spatial_shape, *, pixel_sizes=None):
        factors = self.factors(len(spatial_shape), pixel_sizes)
        out = tuple(int(round(s * f)) for s, f in zip(spatial_shape, factors))  # noqa: RUF046 - s may be a numpy int
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
        names = spatial_names(len(spatial_shape))
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
