"""Writing image files: OME-TIFF, atomically (temporary name in the same folder, then rename).

Channel names are written as given (e.g. ``"DNA (predicted)"``); a provenance mapping goes into
the OME metadata (see :mod:`labelfree_jax.imagefiles.provenance`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from labelfree_jax.core.atomic import atomic_path
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.provenance import ProvenanceValue, provenance_metadata

__all__ = ["WRITABLE_DTYPES", "write_ome_tiff"]

logger = logging.getLogger(__name__)

#: dtypes :func:`write_ome_tiff` writes (the OME pixel types numpy and tifffile share).
WRITABLE_DTYPES = tuple(
    np.dtype(d) for d in ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64")
)


def _checked_array(p: Path, data: np.ndarray, axes: str | None) -> tuple[np.ndarray, str]:
    """Check ``data`` against ``axes`` (inferred when None); return it with a leading C axis and its axes.

    Raises:
        InputError: bad shape, axes or dtype (the message names ``p``).
    """
    arr = np.asarray(data)
    if axes is None:
        inferred = {4: "CZYX", 3: "CYX", 2: "YX"}.get(arr.ndim)
        if inferred is None:
            raise InputError(f"{p}: cannot write an array of shape {arr.shape}; expected (C,Z,Y,X) or (C,Y,X)")
        axes = inferred
    axes = axes.upper()
    if axes not in ("CZYX", "CYX", "ZYX", "YX"):
        raise InputError(f"{p}: axes must be 'CZYX', 'CYX', 'ZYX' or 'YX'; got {axes!r}")
    if arr.ndim != len(axes):
        raise InputError(f"{p}: data shape {arr.shape} does not match axes {axes!r}")
    if arr.size == 0:
        raise InputError(f"{p}: cannot write an empty array (shape {arr.shape})")
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.kind in "uif":
        arr = arr.astype(arr.dtype.newbyteorder("="))  # big-endian: written in native byte order
    if arr.dtype not in WRITABLE_DTYPES:
        raise InputError(
            f"{p}: cannot write dtype {arr.dtype}; use one of {', '.join(str(d) for d in WRITABLE_DTYPES)} "
            f"(e.g. data.astype(np.float32))"
        )
    if "C" not in axes:
        arr = arr[np.newaxis]
        axes = "C" + axes
    return arr, axes


def _ome_metadata(
    p: Path,
    axes: str,
    n_channels: int,
    channel_names: Sequence[str] | None,
    pixel_sizes: dict[str, float] | None,
) -> dict[str, Any]:
    """The OME metadata tifffile writes: axes, channel names, physical pixel sizes (µm).

    Raises:
        InputError: wrong number of channel names, or a pixel size that is not a positive
            number of a spatial axis of ``axes`` (the message names ``p``).
    """
    metadata: dict[str, Any] = {"axes": axes}
    if channel_names is not None:
        names = [str(n) for n in channel_names]
        if isinstance(channel_names, str) or len(names) != n_channels:
            raise InputError(f"{p}: {n_channels} channel(s) but channel_names={channel_names!r}")
        metadata["Channel"] = {"Name": names}
    if pixel_sizes:
        spatial = [a.lower() for a in axes[1:]]
        for k, v in pixel_sizes.items():
            if k not in spatial:
                raise InputError(f"{p}: pixel size axis {k!r} is not a spatial axis of {axes!r}")
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise InputError(f"{p}: pixel size {k}={v!r} is not a number") from None
            if not (math.isfinite(fv) and fv > 0):
                raise InputError(f"{p}: pixel size {k}={v!r} must be a positive number of µm")
            metadata[f"PhysicalSize{k.upper()}"] = fv
            metadata[f"PhysicalSize{k.upper()}Unit"] = "µm"
    return metadata


def write_ome_tiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    pixel_sizes: dict[str, float] | None = None,
    provenance: Mapping[str, ProvenanceValue] | None = None,
) -> Path:
    """Write an OME-TIFF atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: destination (an existing file is replaced only once the new one is complete).
        data: ``(C, Z, Y, X)`` / ``(C, Y, X)``, or ``(Z, Y, X)`` / ``(Y, X)`` without C;
            dtype one of :data:`WRITABLE_DTYPES` (written as is; a big-endian array, e.g.
            ``>u2``, is converted to native byte order).
        axes: ``"CZYX"``, ``"CYX"``, ``"ZYX"`` or ``"YX"``; None infers it from ``data.ndim``
            (4 → CZYX, 3 → CYX, 2 → YX). A 3D array without C must say ``axes="ZYX"``.
        channel_names: one name per channel, written as given (e.g. ``"DNA (predicted)"``).
        pixel_sizes: µm per pixel, keys among ``"z"``, ``"y"``, ``"x"`` (spatial axes only).
        provenance: ``{name: str | float | int | None}`` stored in the OME metadata (the image's
            Description as a JSON object, and a MapAnnotation); read it back with
            :func:`~labelfree_jax.imagefiles.provenance.read_provenance`. Replacing an existing
            file or not is the caller's choice: this function replaces it.

    Returns:
        The path written.

    Raises:
        InputError: bad shape/axes/dtype/names/pixel sizes/provenance, or the write failed (no
            partial file is left behind).
    """
    p = Path(path)
    arr, axes = _checked_array(p, data, axes)
    metadata = _ome_metadata(p, axes, arr.shape[0], channel_names, pixel_sizes)
    metadata.update(provenance_metadata(p, provenance))
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{p}: folder {folder} does not exist")
    try:
        # exclusive creation ('x') of a fresh name: permissions follow the umask, as a plain open()
        with atomic_path(p, suffix="") as tmp:
            tifffile.imwrite(
                tmp, np.ascontiguousarray(arr), mode="x", ome=True, photometric="minisblack", metadata=metadata
            )
    except Exception as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{p}: writing the OME-TIFF failed: {type(err).__name__}: {err}") from err
    logger.debug("wrote %s: %s %s %s", p, axes, arr.shape, arr.dtype)
    return p
