"""Axis letters, length units and the plan that turns a stored array into ``(C, Z, Y, X)`` / ``(C, Y, X)``.

Shared by the TIFF and CZI readers; works on shapes first (:func:`plan_layout`), so a file's
layout, size and assumptions are known before any pixel is read, then on the pixels
(:meth:`Layout.apply`).

Axis rules (``tifffile`` reports the axes of the stored array after dropping length-1 axes):

* ``C`` channel, ``Z`` depth, ``Y``/``X`` rows/columns, ``T`` time (one time point is read);
* ``S`` (samples per pixel, e.g. RGB or a planar multi-sample TIFF) is a channel axis;
* other letters tifffile uses for axes it cannot name (``Q``, ``I``, ...): a single one becomes
  ``Z`` (or ``C`` when there already is a Z), and that guess is recorded as a warning;
* Y and X must each be at least 2 pixels long (a 1-pixel-wide "image" is refused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError

__all__ = [
    "KNOWN_AXES",
    "MIN_SPATIAL_SIZE",
    "Layout",
    "plan_layout",
    "to_um",
    "too_small_message",
    "validate_axes_arg",
    "where",
]

KNOWN_AXES = "TCZYX"
#: Y and X shorter than this are refused: nothing can be predicted on a 1-pixel-wide image.
MIN_SPATIAL_SIZE = 2

# micrometres per unit, for OME / ImageJ / CZI length units
_UNIT_TO_UM = {
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
}


def where(path: Path | None) -> str:
    """The file name for a message (``<array>`` for data built in memory)."""
    return f"{path}" if path is not None else "<array>"


def to_um(value: Any, unit: Any, what: str, notes: list[str]) -> float | None:
    """Convert a length to µm; None (and a note in ``notes``) when it is unusable."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        notes.append(f"ignoring non-numeric {what} {value!r}")
        return None
    factor = 1.0
    if unit is not None and str(unit).strip() != "":
        key = str(unit).strip()
        found = _UNIT_TO_UM.get(key, _UNIT_TO_UM.get(key.lower()))
        if found is None:
            notes.append(f"ignoring {what} with unknown unit {unit!r}")
            return None
        factor = found
    v *= factor
    if not (math.isfinite(v) and v > 0):
        notes.append(f"ignoring non-positive {what} {value!r}")
        return None
    return v


def validate_axes_arg(axes: str, shape: tuple[int, ...], path: Path | None) -> str:
    """Check a user's ``axes=`` against the stored array's shape; returns it upper-cased.

    Raises:
        InputError: unknown or repeated letters, no Y/X, or not one letter per stored axis.
    """
    ax = axes.upper()
    bad = [a for a in ax if a not in KNOWN_AXES]
    if bad:
        raise InputError(
            f"{where(path)}: axes={axes!r} has unknown letters {bad}; use letters from "
            f"'{KNOWN_AXES}' (e.g. 'ZYX', 'CYX', 'CZYX', 'ZCYX', 'YXC')"
        )
    if len(set(ax)) != len(ax):
        raise InputError(f"{where(path)}: axes={axes!r} repeats a letter")
    if "Y" not in ax or "X" not in ax:
        raise InputError(f"{where(path)}: axes={axes!r} must contain Y and X")
    if len(ax) != len(shape):
        raise InputError(
            f"{where(path)}: axes={axes!r} has {len(ax)} letters but the stored array has "
            f"{len(shape)} axes (shape {shape})"
        )
    return ax


@dataclass(frozen=True)
class Layout:
    """How a stored array becomes channel-first.

    Attributes:
        stored_shape: the stored array's shape (as the reader returns it).
        stored_axes: one letter per stored axis (after the guesses above).
        time_axis: position of ``T`` in ``stored_shape`` when there are several time points.
        n_time: number of time points (1 without a T axis).
        squeezed_shape: ``stored_shape`` without T and the dropped length-1 axes.
        perm: transpose of the squeezed array into ``out_axes`` order (C added last).
        out_axes: ``"CZYX"`` or ``"CYX"``.
        out_shape: shape of one time point, channel-first.
        warnings: the assumptions made (axes guessed, channels-last suspected).
    """

    stored_shape: tuple[int, ...]
    stored_axes: str
    time_axis: int | None
    n_time: int
    squeezed_shape: tuple[int, ...]
    perm: tuple[int, ...]
    out_axes: str
    out_shape: tuple[int, ...]
    warnings: tuple[str, ...] = ()

    def apply(self, data: np.ndarray, time: int | None) -> np.ndarray:
        """Reorder ``data`` (``stored_shape``, or its T axis already cut to length 1) to ``out_shape``.

        ``time`` indexes the T axis of ``data`` (0 when the reader read one time point only).
        """
        if self.time_axis is not None:
            data = np.take(data, 0 if time is None else time, axis=self.time_axis)
        data = data.reshape(self.squeezed_shape)
        data = np.transpose(data, self.perm).reshape(self.out_shape)
        if data.dtype.byteorder not in ("=", "|"):  # big-endian file: native byte order for numpy/JAX
            data = data.astype(data.dtype.newbyteorder("="))
        return np.ascontiguousarray(data)


def _guess_unknown(axes: str, shape: tuple[int, ...], path: Path | None, notes: list[str]) -> str:
    """Name the axes tifffile could not (``Q``, ``I``, ...): one becomes Z, or C when there is a Z."""
    unknown = [a for a in axes if a not in KNOWN_AXES + "S"]
    if not unknown:
        return axes
    if len(unknown) == 1 and "Z" not in axes:
        guessed = axes.replace(unknown[0], "Z")
    elif len(unknown) == 1 and "C" not in axes:
        guessed = axes.replace(unknown[0], "C")
    else:
        raise InputError(
            f"{where(path)}: cannot tell what the axes of the stored array are (tifffile reports "
            f"{axes!r} for shape {shape}); pass axes=..., e.g. axes='CZYX'"
        )
    notes.append(f"no axes metadata: read the {len(axes)} axes of shape {shape} as {guessed}; pass axes=... if wrong")
    return guessed


def _squeeze(shape: tuple[int, ...], axes: str, *, user_axes: bool) -> list[int]:
    """Indices of the stored axes kept: not T, and not length 1 unless Y, X (or Z the user named)."""
    return [
        i
        for i, a in enumerate(axes)
        if a != "T" and (shape[i] != 1 or a in "YX" or (a == "Z" and user_axes))
    ]


def _channels_last_note(shape: Sequence[int]) -> str:
    suggest = "YXC" if len(shape) == 3 else "Z" * (len(shape) - 3) + "YXC"
    return f"last axis has {shape[-1]} samples and no metadata: channels last? pass axes='{suggest}'"


def plan_layout(
    shape: tuple[int, ...],
    axes: str,
    path: Path | None,
    *,
    user_axes: bool,
) -> Layout:
    """Plan the reordering of a stored array with ``shape`` and axis letters ``axes``.

    Args:
        shape: the stored array's shape.
        axes: one letter per axis (the user's ``axes=`` when ``user_axes``, else the file's).
        path: the file, for messages.
        user_axes: the letters come from the user (a length-1 Z is then kept). Otherwise, when
            the axes had to be guessed and the last axis has <= 4 samples, that is flagged as
            probably channels-last (a warning suggesting ``axes='YXC'``).

    Raises:
        InputError: axes that cannot be told apart, both channels and samples, no Y/X, an empty
            image, or Y/X shorter than :data:`MIN_SPATIAL_SIZE` (the message names the shape).
    """
    shape = tuple(int(s) for s in shape)
    axes = axes.upper()
    if len(axes) != len(shape):
        raise InputError(f"{where(path)}: axes {axes!r} do not match the array shape {shape}")
    if math.prod(shape) == 0:
        raise InputError(f"{where(path)}: the image is empty (shape {shape})")
    notes: list[str] = []
    guessed = axes if user_axes else _guess_unknown(axes, shape, path, notes)
    if notes and len(shape) >= 3 and shape[-1] <= 4:
        notes.append(_channels_last_note(shape))
    if "S" in guessed and "C" in guessed and shape[guessed.index("S")] > 1 and shape[guessed.index("C")] > 1:
        raise InputError(
            f"{where(path)}: the image has both channels and samples per pixel (axes {guessed}, "
            f"shape {shape}); this layout is not supported"
        )
    time_axis = guessed.index("T") if "T" in guessed and shape[guessed.index("T")] > 1 else None
    n_time = shape[time_axis] if time_axis is not None else 1
    keep = _squeeze(shape, guessed, user_axes=user_axes)
    letters = "".join(guessed[i] for i in keep).replace("S", "C")
    squeezed = tuple(shape[i] for i in keep)
    if "Y" not in letters or "X" not in letters or len(set(letters)) != len(letters):
        raise InputError(f"{where(path)}: image axes {guessed!r} (shape {shape}) cannot be read as C, Z, Y, X")
    target = "CZYX" if "Z" in letters else "CYX"
    present = [a for a in target if a in letters]
    perm = tuple(letters.index(a) for a in present)
    sizes = dict(zip(letters, squeezed))
    out_shape = tuple(sizes.get(a, 1) for a in target)
    if sizes["Y"] < MIN_SPATIAL_SIZE or sizes["X"] < MIN_SPATIAL_SIZE:
        raise InputError(too_small_message(path, out_shape, target))
    return Layout(
        stored_shape=shape,
        stored_axes=guessed,
        time_axis=time_axis,
        n_time=n_time,
        squeezed_shape=squeezed,
        perm=perm,
        out_axes=target,
        out_shape=out_shape,
        warnings=tuple(notes),
    )


def too_small_message(path: Path | None, shape: tuple[int, ...], axes: str, *, subject: str = "the image",
                      axes_label: str = "axes") -> str:
    """The one-line refusal of an image whose Y or X is shorter than :data:`MIN_SPATIAL_SIZE`.

    One message for every reader (TIFF, CZI, OME-Zarr); ``subject`` names the part of the file
    (e.g. ``"scene 'A1'"``), ``axes_label`` what ``axes`` are (e.g. ``"tifffile axes"``).
    """
    return (
        f"{where(path)}: {subject} is too small to predict on or train with: shape {shape} ({axes_label} {axes}); "
        f"Y and X need at least {MIN_SPATIAL_SIZE} pixels each"
    )
