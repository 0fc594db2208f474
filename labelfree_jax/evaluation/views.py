"""Arrays for figures: layout normalisation, percentile clipping, projections and orthogonal views.

The figure modules (:mod:`~labelfree_jax.evaluation.plots`, :mod:`~labelfree_jax.evaluation.gif`)
share these rules. Numpy only: no matplotlib here.

Array layout (``spatial_dims`` argument of every figure function):

* ``None`` (default, the project convention: channel-first): a 4-D array is ``(C, Z, Y, X)``,
  a 3-D array is ``(C, Y, X)``, a 2-D array is one ``(Y, X)`` image.
* ``3``: the last three axes are ``(Z, Y, X)``; a 3-D array is one ``(Z, Y, X)`` volume.
* ``2``: the last two axes are ``(Y, X)``; a 3-D array is ``(C, Y, X)``.

3D volumes are shown as an orthogonal-view composite, as in the original pytorch_fnet notebook's
``show_img``: the XY view, with the YZ view to its right and the XZ view below it. A view is
either the maximum projection along the viewing axis (``projection="max"``) or the middle slice
(``projection="slice"``). ``pixel_sizes`` (micrometres, ``{"z", "y", "x"}``) stretch the Z axis
of side views to its physical size (:func:`z_scale`). Intensities are percentile-clipped per
image and channel (:func:`clip01`, percentiles in percent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError

__all__ = [
    "DEFAULT_CLIP",
    "VIEW_GAP",
    "as_czyx",
    "clip01",
    "max_projection",
    "orthogonal_views",
    "same_channels",
    "same_spatial",
    "z_scale",
]

#: Default ``clip_percentiles`` (percent) of the figures.
DEFAULT_CLIP = (0.02, 99.8)
_AXIS_LETTERS = {"z": -3, "y": -2, "x": -1}
VIEW_GAP = 2  # pixels between the views of a composite


def as_czyx(x: Any, spatial_dims: int | None = None, what: str = "image") -> np.ndarray:
    """``x`` as float32 ``(C, Z, Y, X)`` (Z = 1 for 2D images), per the module's layout rules.

    ``what`` names the array in error messages. Raises :class:`InputError` for other shapes,
    empty arrays, non-numeric dtypes and non-finite values.
    """
    a = np.asarray(x)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
    if spatial_dims not in (None, 2, 3):
        raise InputError(f"spatial_dims must be None, 2 or 3, got {spatial_dims!r}")
    nd = a.ndim
    if spatial_dims is None:
        spatial_dims = 3 if nd == 4 else 2
    # new axes that bring each accepted layout to (C, Z, Y, X); 2D images get a Z of 1
    leading = {(3, 3): (None,), (3, 4): (), (2, 2): (None, None), (2, 3): (slice(None), None)}
    if (spatial_dims, nd) in leading:
        a = a[leading[(spatial_dims, nd)]]
    else:
        raise InputError(
            f"{what}: shape {a.shape} is not (C, Z, Y, X), (C, Y, X), (Z, Y, X) or (Y, X) "
            f"(spatial_dims={spatial_dims})"
        )
    if a.size == 0:
        raise InputError(f"{what}: the array is empty (shape {a.shape})")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what}: contains NaN or infinite values")
    return a


def same_spatial(*named: tuple[str, np.ndarray | None]) -> None:
    """Raise :class:`InputError` unless the ``(name, (C, *spatial) array or None)`` share their spatial shape."""
    shapes = {name: a.shape[1:] for name, a in named if a is not None}
    if len(set(shapes.values())) > 1:
        raise InputError("images differ in spatial shape: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def same_channels(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` unless observed ``a`` and predicted ``b`` have as many channels."""
    if a.shape[0] != b.shape[0]:
        raise InputError(f"{what}: observed has {a.shape[0]} channel(s), predicted {b.shape[0]}")


def clip01(a: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Scale ``a`` so its ``percentiles`` (in %) map to 0 and 1, clipped to [0, 1] (float32)."""
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0 <= lo_p < hi_p <= 100:
        raise InputError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")
    lo, hi = np.percentile(a, [lo_p, hi_p])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def z_scale(pixel_sizes: Mapping[str, float] | None) -> int:
    """Integer stretch of the Z axis in side views: z pixel size over x pixel size (1 if unknown)."""
    if not pixel_sizes or "z" not in pixel_sizes or not pixel_sizes.get("x"):
        return 1
    ratio = float(pixel_sizes["z"]) / float(pixel_sizes["x"])
    return max(1, round(ratio)) if math.isfinite(ratio) else 1


def max_projection(x: Any, axis: int | str = "z") -> np.ndarray:
    """Maximum intensity projection of ``x`` along ``axis``.

    ``axis``: an integer axis, or ``"z"``, ``"y"``, ``"x"`` meaning the third-, second- and
    last axis (``(..., Z, Y, X)`` layout). Returns ``x`` with that axis removed, same dtype.
    """
    a = np.asarray(x)
    if isinstance(axis, str):
        if axis.lower() not in _AXIS_LETTERS:
            raise InputError(f"axis must be an integer or one of 'z', 'y', 'x', got {axis!r}")
        axis = _AXIS_LETTERS[axis.lower()]
    if not -a.ndim <= axis < a.ndim:
        raise InputError(f"axis {axis} is out of range for an array of shape {a.shape}")
    return np.max(a, axis=axis)


def orthogonal_views(volume: Any, *, projection: str = "max", z_scale: int = 1) -> np.ndarray:
    """One ``(Z, Y, X)`` volume as a 2-D composite: XY view, YZ view to the right, XZ below.

    ``projection``: ``"max"`` (maximum projections) or ``"slice"`` (middle slices). ``z_scale``
    repeats each Z row/column of the side views that many times (pixel-size aspect). The gaps
    and the empty corner are NaN. Shape ``(Y + g + Z*s, X + g + Z*s)`` with g = 2; a volume with
    Z = 1 is returned as its single ``(Y, X)`` plane.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise InputError(f"expected a (Z, Y, X) volume, got shape {v.shape}")
    if projection not in ("max", "slice"):
        raise InputError(f"projection must be 'max' or 'slice', got {projection!r}")
    z, y, x = v.shape
    if z == 1:
        return v[0]
    if projection == "max":
        xy, xz, zy = v.max(0), v.max(1), v.max(2)
    else:
        xy, xz, zy = v[z // 2], v[:, y // 2, :], v[:, :, x // 2]
    s = max(1, int(z_scale))
    xz = np.repeat(xz, s, axis=0)  # (Z*s, X)
    yz = np.repeat(zy, s, axis=0).T  # (Y, Z*s)
    zs = z * s
    out = np.full((y + VIEW_GAP + zs, x + VIEW_GAP + zs), np.nan, np.float32)
    out[:y, :x] = xy
    out[:y, x + VIEW_GAP:] = yz
    out[y + VIEW_GAP:, :x] = xz
    return out
