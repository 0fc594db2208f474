"""Writing OME-Zarr (OME-NGFF 0.4 on zarr v2, or 0.5 on zarr v3) with ome-zarr-py: multiscale images and HCS plates.

:func:`write_ome_zarr` writes one image as a chunked multiscale pyramid (level 0 as given, each
further level half the size in Y and X, down to about :data:`MIN_LEVEL_SIDE` pixels), with axes,
units (µm), channel names (OMERO labels) and a provenance mapping in the group attributes under
:data:`PROVENANCE_ATTRIBUTE` (read back by :func:`read_zarr_provenance`). It writes into a
temporary folder beside the destination and renames it, so nothing half-written ever carries the
final name (a killed run leaves a ``*.tmp-<pid>-<hex>`` folder that
:func:`labelfree_jax.core.atomic.remove_stale_temporaries` removes). Every chunk is written, even
one holding only zeros, so a complete store has no missing chunks.

:func:`write_plate_layout` creates (or reuses) an HCS plate folder with the layout of an input
plate (rows, columns, wells, fields), into which each field is then written by
:func:`write_ome_zarr` at ``<plate>/<row>/<column>/<field>``: per image atomic, so a rerun finds
the finished fields and redoes the others.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import remove_stale_temporaries, temporary_name
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.provenance import ProvenanceValue, check_provenance
from labelfree_jax.imagefiles.write import _checked_array, _ome_metadata
from labelfree_jax.imagefiles.zarr_read import SUPPORTED_VERSIONS, PlateLayout, group_attributes, is_zarr

__all__ = [
    "DEFAULT_NGFF_VERSION",
    "MIN_LEVEL_SIDE",
    "PROVENANCE_ATTRIBUTE",
    "create_level0",
    "read_zarr_provenance",
    "write_ome_zarr",
    "write_ome_zarr_from_level0",
    "write_plate_layout",
]

logger = logging.getLogger(__name__)

#: NGFF version written by default: 0.4 (zarr v2), which more viewers read today than 0.5.
DEFAULT_NGFF_VERSION = "0.4"
#: Pyramid levels are added while the smaller of Y and X stays at least this long.
MIN_LEVEL_SIDE = 64
#: Group attribute holding the provenance mapping (beside, not inside, the NGFF ``ome`` metadata).
PROVENANCE_ATTRIBUTE = "labelfree_jax_provenance"

_MAX_LEVELS = 5


def _format(path: Path, version: str) -> Any:
    if version not in SUPPORTED_VERSIONS:
        raise InputError(f"{path}: cannot write OME-NGFF version {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}")
    try:
        from ome_zarr.format import format_from_version
    except ImportError:
        raise InputError(f"{path}: writing OME-Zarr needs the 'ome-zarr' package: pip install labelfree-jax[zarr]"
                         ) from None
    return format_from_version(version)


def _level_factors(shape_yx: tuple[int, int], levels: int | None) -> list[dict[str, int]]:
    """Downsampling factors (relative to level 0) of the levels after level 0."""
    if levels is None:
        levels = 1
        while levels < _MAX_LEVELS and min(shape_yx) // 2**levels >= MIN_LEVEL_SIDE:
            levels += 1
    return [{"y": 2**k, "x": 2**k} for k in range(1, max(1, int(levels)))]


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One channel, up to 32 z-planes and 256 x 256 pixels per chunk."""
    limits = (1, 32, 256, 256) if len(shape) == 4 else (1, 256, 256)
    return tuple(min(s, c) for s, c in zip(shape, limits))


def _write_group(tmp: Path, arr: Any, axes: str, meta: dict[str, Any], fmt: Any,
                 chunks: tuple[int, ...], levels: int | None, provenance: dict[str, ProvenanceValue],
                 window: tuple[float, float] | None = None) -> None:
    """Write ``arr`` (a numpy or dask array) as a multiscale image group at ``tmp``; ``window``: its (min, max)."""
    import zarr
    from ome_zarr.writer import write_image

    letters = axes.lower()
    units = {a: "micrometer" for a in "zyx" if f"PhysicalSize{a.upper()}" in meta}
    scale = {a: float(meta.get(f"PhysicalSize{a.upper()}", 1.0)) for a in letters if a != "c"}
    extra: dict[str, Any] = {}
    if "Channel" in meta:
        lo, hi = window if window is not None else (float(np.min(arr)), float(np.max(arr)))
        window = {"start": lo, "end": hi, "min": lo, "max": hi}
        extra["omero"] = {"channels": [{"label": n, "color": "FFFFFF", "window": window, "active": True}
                                       for n in meta["Channel"]["Name"]]}
    group = zarr.open_group(str(tmp), mode="w-", zarr_format=fmt.zarr_format)
    with zarr.config.set({"array.write_empty_chunks": True}):
        write_image(
            arr, group, fmt=fmt, axes=[{"name": a, "type": "channel" if a == "c" else "space"} for a in letters],
            scale={"c": 1.0, **scale}, axes_units=units or None, scale_factors=_level_factors(arr.shape[-2:], levels),
            storage_options={"chunks": chunks}, **extra,
        )
    if provenance:
        group.attrs[PROVENANCE_ATTRIBUTE] = provenance


def _replace_folder(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``; an existing ``path`` is moved aside first and removed after."""
    old = None
    if path.exists():
        old = temporary_name(path, suffix="")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_ome_zarr(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    pixel_sizes: dict[str, float] | None = None,
    provenance: Mapping[str, ProvenanceValue] | None = None,
    chunks: Sequence[int] | None = None,
    levels: int | None = None,
    ngff_version: str = DEFAULT_NGFF_VERSION,
) -> Path:
    """Write a multiscale OME-Zarr image atomically (temporary folder beside ``path``, then rename).

    Args:
        path: destination folder (e.g. ``cell_prediction.ome.zarr``); an existing one is replaced
            only once the new one is complete.
        data: ``(C, Z, Y, X)`` / ``(C, Y, X)`` (or without C, as
            :func:`~labelfree_jax.imagefiles.write.write_ome_tiff`), dtype one of
            :data:`~labelfree_jax.imagefiles.write.WRITABLE_DTYPES`.
        axes: ``"CZYX"``, ``"CYX"``, ``"ZYX"`` or ``"YX"``; None infers it from ``data.ndim``.
        channel_names: one name per channel (OMERO channel labels), e.g. ``"DNA (predicted)"``.
        pixel_sizes: µm per pixel, keys among ``"z"``, ``"y"``, ``"x"``: the level-0 ``scale``
            with unit ``micrometer`` (an axis without one gets scale 1 and no unit).
        provenance: ``{name: str | float | int | None}`` stored in the group attributes
            (:data:`PROVENANCE_ATTRIBUTE`).
        chunks: chunk shape of every level (default: 1 channel, up to 32 z-planes, 256 x 256).
        levels: number of pyramid levels (default: halve Y and X while the smaller stays
            >= :data:`MIN_LEVEL_SIDE`, at most 5 levels).
        ngff_version: ``"0.4"`` (zarr v2) or ``"0.5"`` (zarr v3).

    Returns:
        The path written.

    Raises:
        InputError: bad shape/axes/dtype/names/pixel sizes/provenance/version, ome-zarr missing,
            or the write failed (no partial folder is left at ``path``).
    """
    p = Path(path)
    fmt = _format(p, ngff_version)
    arr, axes = _checked_array(p, data, axes)
    meta = _ome_metadata(p, axes, arr.shape[0], channel_names, pixel_sizes)
    checked = check_provenance(p, provenance) if provenance is not None else {}
    chunk_shape = tuple(int(c) for c in chunks) if chunks is not None else _default_chunks(arr.shape)
    if len(chunk_shape) != arr.ndim or min(chunk_shape) < 1:
        raise InputError(f"{p}: chunks {chunk_shape} do not fit an array of shape {arr.shape}")
    if not p.parent.is_dir():
        raise InputError(f"{p}: folder {p.parent} does not exist")
    if p.exists() and not is_zarr(p):
        raise InputError(f"{p}: exists and is not a zarr folder; not replacing it")
    tmp = temporary_name(p, suffix="")
    try:
        _write_group(tmp, np.ascontiguousarray(arr), axes, meta, fmt, chunk_shape, levels, checked)
        _replace_folder(tmp, p)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, InputError) or not isinstance(err, Exception):
            raise
        raise InputError(f"{p}: writing the OME-Zarr failed: {type(err).__name__}: {err}") from err
    logger.debug("wrote %s: %s %s %s (NGFF %s)", p, axes, arr.shape, arr.dtype, ngff_version)
    return p


def create_level0(path: str | os.PathLike[str], shape: Sequence[int], *, chunks: Sequence[int] | None = None,
                  ngff_version: str = DEFAULT_NGFF_VERSION) -> tuple[Path, Any]:
    """A float32 zarr array to stream a level 0 into, at a temporary name beside ``path``: ``(its folder, array)``.

    The array (uncompressed, chunks ``chunks`` or the default, fill value 0) is written region by
    region by the caller, then :func:`write_ome_zarr_from_level0` makes the OME-Zarr at ``path``
    from it and removes it. Its name is one of :func:`~labelfree_jax.core.atomic.temporary_name`'s,
    so a killed run's copy is removed as a stale temporary.

    Raises:
        InputError: the version is not supported, or the folder of ``path`` does not exist.
    """
    import zarr

    p = Path(path)
    fmt = _format(p, ngff_version)
    if not p.parent.is_dir():
        raise InputError(f"{p}: folder {p.parent} does not exist")
    shape = tuple(int(s) for s in shape)
    chunk_shape = tuple(int(c) for c in chunks) if chunks is not None else _default_chunks(shape)
    scratch = temporary_name(p, suffix=".level0")
    arr = zarr.create_array(str(scratch), shape=shape, chunks=chunk_shape, dtype="float32", fill_value=0.0,
                            compressors=None, zarr_format=fmt.zarr_format)
    return scratch, arr


def write_ome_zarr_from_level0(
    path: str | os.PathLike[str],
    level0: str | os.PathLike[str],
    *,
    axes: str,
    channel_names: Sequence[str] | None = None,
    pixel_sizes: dict[str, float] | None = None,
    provenance: Mapping[str, ProvenanceValue] | None = None,
    window: tuple[float, float] | None = None,
    chunks: Sequence[int] | None = None,
    levels: int | None = None,
    ngff_version: str = DEFAULT_NGFF_VERSION,
) -> Path:
    """Write a multiscale OME-Zarr at ``path`` from a stored level 0 (a zarr array folder), chunk by chunk.

    As :func:`write_ome_zarr` (same metadata, pyramid and atomic rename), but the data is the
    zarr array at ``level0`` (e.g. from :func:`create_level0`), read lazily with dask: level 0 is
    copied and the pyramid computed from it chunk by chunk (ome-zarr-py's dask pyramid), so
    memory does not grow with the image. ``axes``: ``"CZYX"`` or ``"CYX"``; ``window``: the data's
    (min, max) for the OMERO channel window (computed from the store when None). ``level0`` is
    removed once the image is in place.

    Raises:
        InputError: bad axes/names/pixel sizes/provenance/version, or the write failed (no
            partial folder is left at ``path``; ``level0`` is removed either way).
    """
    import dask
    import dask.array as da

    p = Path(path)
    try:
        fmt = _format(p, ngff_version)
        if axes not in ("CZYX", "CYX"):
            raise InputError(f"{p}: axes must be 'CZYX' or 'CYX' for a stored level 0; got {axes!r}")
        arr = da.from_zarr(str(level0))
        if arr.ndim != len(axes):
            raise InputError(f"{p}: the stored level 0 has shape {arr.shape}, not {axes}")
        meta = _ome_metadata(p, axes, int(arr.shape[0]), channel_names, pixel_sizes)
        checked = check_provenance(p, provenance) if provenance is not None else {}
        chunk_shape = tuple(int(c) for c in chunks) if chunks is not None else _default_chunks(arr.shape)
        if p.exists() and not is_zarr(p):
            raise InputError(f"{p}: exists and is not a zarr folder; not replacing it")
        if window is None:
            window = (float(arr.min().compute()), float(arr.max().compute()))
        tmp = temporary_name(p, suffix="")
        try:
            with dask.config.set(scheduler="threads"):
                _write_group(tmp, arr, axes, meta, fmt, chunk_shape, levels, checked, window=window)
            _replace_folder(tmp, p)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException as err:
        if isinstance(err, InputError) or not isinstance(err, Exception):
            raise
        raise InputError(f"{p}: writing the OME-Zarr failed: {type(err).__name__}: {err}") from err
    finally:
        shutil.rmtree(level0, ignore_errors=True)
    logger.debug("wrote %s from the stored level 0 %s: %s %s (NGFF %s)", p, level0, axes, arr.shape, ngff_version)
    return p


def _plate_matches(path: Path, layout: PlateLayout) -> bool:
    plate = group_attributes(path).get("plate") or {}
    return [w.get("path") for w in plate.get("wells", [])] == list(layout.wells)


def write_plate_layout(
    path: str | os.PathLike[str],
    layout: PlateLayout,
    *,
    ngff_version: str = DEFAULT_NGFF_VERSION,
    provenance: Mapping[str, ProvenanceValue] | None = None,
) -> Path:
    """Create an empty HCS plate with ``layout`` (plate and well metadata), or reuse one that has it.

    Fields are then written into ``<path>/<row>/<column>/<field>`` with :func:`write_ome_zarr`.
    Temporaries of a killed run inside an existing plate are removed. The plate is built under
    a temporary name and renamed, so two processes starting at once end with one plate.

    Raises:
        InputError: ``path`` exists with another layout or is not a zarr folder, or the write failed.
    """
    p = Path(path)
    fmt = _format(p, ngff_version)
    if p.exists():
        if not is_zarr(p) or not _plate_matches(p, layout):
            raise InputError(f"{p}: exists and is not a plate with the input's layout; remove it or choose another --out")
        remove_stale_temporaries(p, recursive=True)
        return p
    checked = check_provenance(p, provenance) if provenance is not None else {}
    tmp = temporary_name(p, suffix="")
    try:
        _write_plate_groups(tmp, layout, fmt, checked)
        try:
            os.rename(tmp, p)  # fails if another process made the plate meanwhile: use theirs
        except OSError:
            if not (p.exists() and _plate_matches(p, layout)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, InputError) or not isinstance(err, Exception):
            raise
        raise InputError(f"{p}: writing the plate failed: {type(err).__name__}: {err}") from err
    return p


def _write_plate_groups(tmp: Path, layout: PlateLayout, fmt: Any, provenance: dict[str, ProvenanceValue]) -> None:
    import zarr
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    root = zarr.open_group(str(tmp), mode="w-", zarr_format=fmt.zarr_format)
    field_count = max(len(f) for f in layout.fields.values())
    write_plate_metadata(root, list(layout.rows), list(layout.columns), list(layout.wells), fmt=fmt,
                         field_count=field_count, name=layout.name)
    for well in layout.wells:
        row, column = well.split("/")
        write_well_metadata(root.require_group(row).require_group(column), list(layout.fields[well]), fmt=fmt)
    if provenance:
        root.attrs[PROVENANCE_ATTRIBUTE] = provenance


def read_zarr_provenance(path: str | os.PathLike[str]) -> dict[str, ProvenanceValue]:
    """The provenance :func:`write_ome_zarr` stored (``{}`` when there is none).

    Raises:
        InputError: ``path`` is not a zarr folder.
    """
    p = Path(path)
    if not is_zarr(p):
        raise InputError(f"{p}: not a zarr folder")
    value = group_attributes(p).get(PROVENANCE_ATTRIBUTE)
    return dict(value) if isinstance(value, dict) else {}
