"""OME-Zarr (OME-NGFF 0.4 and 0.5, zarr v2 and v3 stores): images and HCS plates, read with ome-zarr-py and zarr.

An OME-Zarr "file" is a folder (``*.ome.zarr``, or any folder holding ``.zgroup``/``.zattrs``
(zarr v2) or ``zarr.json`` (zarr v3)). Three layouts are read:

* a multiscale image: one scene, level 0 of the pyramid (the full resolution);
* an HCS plate (``plate`` metadata): one scene per field of view of every well, named
  ``"<row>/<column>/<field>"`` (e.g. ``"A/1/0"``), in the plate's well order;
* a well (``well`` metadata): one scene per field, named by its path (``"0"``, ``"1"`` ...).

The NGFF version comes from the metadata (``ome.version`` in 0.5, ``multiscales[].version`` /
``plate.version`` in 0.4) and is checked against :data:`SUPPORTED_VERSIONS`; the metadata of each
image (axes, coordinate transformations, OMERO channel labels) is read by ome-zarr-py's
``Reader``, the pixels of level 0 with zarr. Axes: ``time`` → T, ``channel`` → C, ``space``
named ``z``/``y``/``x`` → Z/Y/X (an axis without a type is taken by its name); anything else
(a custom axis, a space axis with another name) is refused. Pixel sizes are the ``scale``
transformation of level 0 (times a multiscale-wide scale, if any) converted to µm from the
axis ``unit``; a space axis without a unit has an unknown pixel size (a warning), not a guessed
one. A Z axis of length 1 is dropped (``CYX``), as for TIFF files.

Chunks missing from level 0 are refused when the image is read (zarr would silently return
the fill value): writers that skip chunks holding only the fill value (zarr-python 3's default)
make such stores; :data:`ALLOW_MISSING_CHUNKS_ENV` ``=1`` reads them as the fill value.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.axes import MIN_SPATIAL_SIZE, to_um, too_small_message
from labelfree_jax.imagefiles.info import SceneInfo, check_allocation, choose_scene, choose_time, pixel_size_notes

__all__ = [
    "ALLOW_MISSING_CHUNKS_ENV",
    "SUPPORTED_VERSIONS",
    "PlateLayout",
    "describe_zarr",
    "group_attributes",
    "is_zarr",
    "ngff_version",
    "open_zarr_lazy",
    "read_zarr",
]

logger = logging.getLogger(__name__)

#: OME-NGFF versions read (and written, see :mod:`labelfree_jax.imagefiles.zarr_write`).
SUPPORTED_VERSIONS = ("0.4", "0.5")

#: Environment variable: ``1`` reads chunks missing from level 0 as the array's fill value.
ALLOW_MISSING_CHUNKS_ENV = "LABELFREE_ZARR_ALLOW_MISSING_CHUNKS"

_ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")


@dataclass(frozen=True)
class PlateLayout:
    """The layout of an HCS plate (to write a prediction plate of the same layout).

    Attributes:
        name: the plate's name, or None.
        rows: row names in order (e.g. ``("A", "B")``).
        columns: column names in order (e.g. ``("1", "2", "3")``).
        wells: well paths ``"<row>/<column>"`` in the plate's order.
        fields: per well path, its field paths (e.g. ``("0", "1")``).
        version: the NGFF version of the input plate.
        unreadable: per field (``"A/1/0"``) whose metadata or level 0 cannot be read, the
            one-line error; such fields are left out of ``describe_image(...).scenes`` (the
            others can still be read) and reading them raises that error.
    """

    name: str | None
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: tuple[str, ...]
    fields: dict[str, tuple[str, ...]]
    version: str
    unreadable: dict[str, str] = field(default_factory=dict)


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr store folder (``*.zarr`` or holding zarr metadata files)."""
    return path.is_dir() and (path.name.lower().endswith(".zarr") or any((path / m).is_file() for m in _ZARR_MARKERS))


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------
def _require(path: Path) -> None:
    try:
        import ome_zarr  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: reading OME-Zarr needs the 'ome-zarr' and 'zarr' packages: "
                         "pip install labelfree-jax[zarr]") from None


def group_attributes(path: Path) -> dict[str, Any]:
    """The zarr group attributes of ``path`` (the ``ome`` namespace of NGFF 0.5 merged in, with ``version``)."""
    _require(path)
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for a folder that is not a group
        raise InputError(f"{path}: cannot open as a zarr group: {type(err).__name__}: {err}") from None
    attrs = dict(group.attrs.asdict())
    if isinstance(attrs.get("ome"), dict):
        attrs = {**attrs, **attrs["ome"]}
    return attrs


def ngff_version(path: Path, attrs: dict[str, Any]) -> str:
    """The NGFF version the metadata declares, checked against :data:`SUPPORTED_VERSIONS`.

    Raises:
        InputError: no OME-NGFF metadata, or a version not supported (one line naming ``path``).
    """
    version = attrs.get("version")
    for key in ("multiscales", "plate", "well"):
        entry = attrs.get(key)
        entry = entry[0] if isinstance(entry, list) and entry else entry
        if version is None and isinstance(entry, dict):
            version = entry.get("version")
    if not any(k in attrs for k in ("multiscales", "plate", "well")):
        if "bioformats2raw.layout" in attrs:
            raise InputError(f"{path}: a bioformats2raw collection is not read yet; give one of its series "
                             f"(e.g. {path / '0'})")
        raise InputError(f"{path}: no OME-NGFF metadata (multiscales, plate or well) in this zarr group")
    if version is None:
        raise InputError(f"{path}: the OME-NGFF metadata names no version; supported: {', '.join(SUPPORTED_VERSIONS)}")
    if str(version) not in SUPPORTED_VERSIONS:
        raise InputError(f"{path}: OME-NGFF version {version!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_VERSIONS)}")
    return str(version)


def _format(version: str) -> Any:
    from ome_zarr.format import format_from_version

    return format_from_version(version)


def _node(path: Path, version: str) -> Any:
    """ome-zarr-py's reader node of the multiscale image at ``path``."""
    from ome_zarr.io import ZarrLocation
    from ome_zarr.reader import Multiscales, Reader

    loc = ZarrLocation(path, fmt=_format(version))
    if not loc.exists():
        raise InputError(f"{path}: no such zarr group")
    for node in Reader(loc)():
        if any(isinstance(s, Multiscales) for s in node.specs):
            return node
    raise InputError(f"{path}: no multiscale image (OME-NGFF 'multiscales' metadata) here")


_TYPE_LETTERS = {"time": "T", "channel": "C"}


def _axis_letter(path: Path, axis: Any) -> str:
    name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
    kind = axis.get("type") if isinstance(axis, dict) else None
    if kind in _TYPE_LETTERS:
        return _TYPE_LETTERS[kind]
    if kind == "space" and name in ("z", "y", "x"):
        return name.upper()
    if kind is None and name in ("t", "c", "z", "y", "x"):
        return name.upper()
    raise InputError(f"{path}: axis {name!r} (type {kind!r}) cannot be used; the model reads time, channel and "
                     f"space axes z, y, x")


def _letters(path: Path, axes_meta: list[Any], ndim: int) -> str:
    letters = "".join(_axis_letter(path, a) for a in axes_meta)
    if len(letters) != ndim:
        raise InputError(f"{path}: {len(letters)} axes in the metadata for a level-0 array of {ndim} dimensions")
    if len(set(letters)) != len(letters) or "Y" not in letters or "X" not in letters:
        raise InputError(f"{path}: axes {letters!r} cannot be used: need y and x, each axis once")
    return letters


def _scale(meta: dict[str, Any], multiscale: dict[str, Any], ndim: int) -> list[float]:
    """Level 0's scale per stored axis (times a multiscale-wide scale)."""
    out = [1.0] * ndim
    transforms = list((meta.get("coordinateTransformations") or [[]])[0])
    transforms += list(multiscale.get("coordinateTransformations") or [])
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale") or ()) == ndim:
            out = [a * float(b) for a, b in zip(out, t["scale"])]
    return out


def _pixel_sizes(axes_meta: list[Any], letters: str, scale: list[float], keep: str,
                 notes: list[str]) -> dict[str, float] | None:
    sizes: dict[str, float] = {}
    unitless = []
    for axis, letter, value in zip(axes_meta, letters, scale):
        if letter not in keep:
            continue
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if not unit:
            unitless.append(f"{letter.lower()}={value:g}")
            continue
        um = to_um(value, unit, f"scale of axis {letter.lower()}", notes)
        if um is not None:
            sizes[letter.lower()] = um
    if unitless:
        notes.append(f"space axes without a unit: pixel size unknown along {', '.join(u[0] for u in unitless)} "
                     f"(scale {', '.join(unitless)} in unknown units)")
    return sizes or None


@dataclass(frozen=True)
class _Source:
    """Where one scene's level 0 lives and how its stored axes map to ``(C, Z, Y, X)``."""

    image: Path  # the multiscale image group
    dataset: str  # level 0, relative to ``image``
    letters: str  # stored axes, e.g. "TCZYX"


def _scene(path: Path, version: str, index: int, name: str) -> tuple[SceneInfo, _Source]:
    """Describe the multiscale image at ``path`` (metadata only).

    Raises:
        InputError: naming ``path`` (for a plate field, the field's own folder) and the problem.
    """
    try:
        return _scene_unchecked(path, version, index, name)
    except (InputError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - ome-zarr-py / zarr / pydantic raise many types: one line
        raise InputError(f"{path}: cannot read the multiscale image: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None


def _scene_unchecked(path: Path, version: str, index: int, name: str) -> tuple[SceneInfo, _Source]:
    node = _node(path, version)
    meta = node.metadata
    multiscale = (group_attributes(path).get("multiscales") or [{}])[0]
    datasets = multiscale.get("datasets") or []
    if not datasets or not node.data:
        raise InputError(f"{path}: the multiscale image has no datasets")
    level0 = node.data[0]
    shape, dtype = tuple(int(s) for s in level0.shape), np.dtype(level0.dtype)
    axes_meta = list(meta.get("axes") or [])
    letters = _letters(path, axes_meta, len(shape))
    size = dict(zip(letters, shape))
    notes: list[str] = []
    axes = "CZYX" if size.get("Z", 1) > 1 else "CYX"
    out_shape = (size.get("C", 1), *(size[a] for a in axes[1:]))
    if min(out_shape[-2:]) < MIN_SPATIAL_SIZE:
        raise InputError(too_small_message(path, out_shape, axes))
    size_notes: list[str] = []
    pixel_sizes = _pixel_sizes(axes_meta, letters, _scale(meta, multiscale, len(shape)), axes[1:], size_notes)
    names = meta.get("channel_names")
    if names is not None and len(names) != out_shape[0]:
        notes.append(f"{len(names)} OMERO channel labels for {out_shape[0]} channels; ignoring the labels")
        names = None
    if len(multiscale_list := group_attributes(path).get("multiscales") or []) > 1:
        notes.append(f"{len(multiscale_list)} multiscale images in the group; reading the first")
    info = SceneInfo(
        index=index, name=name, axes=axes, shape=out_shape, dtype=dtype.newbyteorder("="),
        channel_names=tuple(str(n) for n in names) if names else None, pixel_sizes=pixel_sizes,
        n_time=size.get("T", 1), warnings=tuple(notes + (size_notes or pixel_size_notes(axes, pixel_sizes))),
    )
    return info, _Source(path, str(datasets[0].get("path")), letters)


# --------------------------------------------------------------------------------------------
# layouts: image, plate, well
# --------------------------------------------------------------------------------------------
def _well_fields(path: Path, well: str) -> tuple[str, ...]:
    attrs = group_attributes(path / well)
    images = (attrs.get("well") or {}).get("images")
    if not isinstance(images, list) or not images:
        raise InputError(f"{path / well}: the well lists no images (OME-NGFF 'well' metadata)")
    return tuple(str(im.get("path")) for im in images if isinstance(im, dict))


def _plate_layout(path: Path, attrs: dict[str, Any], version: str) -> PlateLayout:
    plate = attrs.get("plate") or {}
    try:
        rows = tuple(str(r["name"]) for r in plate["rows"])
        columns = tuple(str(c["name"]) for c in plate["columns"])
        wells = tuple(str(w["path"]) for w in plate["wells"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: malformed plate metadata (rows, columns, wells): missing {err}") from None
    if not wells:
        raise InputError(f"{path}: the plate has no wells")
    return PlateLayout(name=plate.get("name"), rows=rows, columns=columns, wells=wells,
                       fields={w: _well_fields(path, w) for w in wells}, version=version)


def _entries(path: Path) -> tuple[str, list[tuple[str, Path]], PlateLayout | None]:
    """``(version, [(scene name, image group)], plate layout or None)`` from the metadata of groups only."""
    attrs = group_attributes(path)
    version = ngff_version(path, attrs)
    if "plate" in attrs:
        layout = _plate_layout(path, attrs, version)
        entries = [(f"{w}/{f}", path / w / f) for w in layout.wells for f in layout.fields[w]]
        return version, entries, layout
    if "well" in attrs and "multiscales" not in attrs:
        return version, [(f, path / f) for f in _well_fields(path.parent, path.name)], None
    return version, [(str((attrs.get("multiscales") or [{}])[0].get("name") or "image"), path)], None


def describe_zarr(path: Path, axes: str | None = None) -> tuple[str, list[SceneInfo], PlateLayout | None]:
    """``("OME-Zarr" | "OME-Zarr plate", scenes, plate layout or None)`` from the metadata (no pixels read).

    A plate field that cannot be described is left out of ``scenes`` and recorded in
    ``PlateLayout.unreadable`` (each :class:`SceneInfo` keeps its ``index`` among all fields).

    Raises:
        InputError: ``axes`` given (OME-Zarr names its axes), not an OME-Zarr, an unsupported
            NGFF version, axes the model cannot use, malformed plate / well metadata.
    """
    _no_axes(path, axes)
    version, entries, layout = _entries(path)
    if layout is None:
        return "OME-Zarr", [_scene(p, version, i, name)[0] for i, (name, p) in enumerate(entries)], None
    scenes = []
    for i, (name, p) in enumerate(entries):
        try:
            scenes.append(_scene(p, version, i, name)[0])
        except InputError as err:
            layout.unreadable[name] = str(err)
    if not scenes:
        raise InputError(f"{path}: no field of the plate can be read; the first: {next(iter(layout.unreadable.values()))}")
    return ("OME-Zarr plate" if layout else "OME-Zarr"), scenes, layout


def _no_axes(path: Path, axes: str | None) -> None:
    if axes is not None:
        raise InputError(f"{path}: axes={axes!r} is for TIFF files without axis metadata; OME-Zarr names its axes")


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------
def _level0(path: Path, source: _Source, where: str) -> Any:
    """Level 0 as a zarr array, its chunks checked."""
    import zarr

    try:
        arr = zarr.open_array(str(source.image / source.dataset), mode="r")
    except Exception as err:  # noqa: BLE001 - a missing or corrupt array: one line
        raise InputError(f"{path}: {where}level 0 ({source.dataset}) cannot be opened: {type(err).__name__}: {err}"
                         ) from None
    missing = int(arr.nchunks) - int(arr.nchunks_initialized)
    if missing and os.environ.get(ALLOW_MISSING_CHUNKS_ENV, "").strip() != "1":
        raise InputError(
            f"{path}: {where}level 0 ({source.dataset}) has {missing} of {arr.nchunks} chunks missing (a broken copy, "
            f"or a writer that skipped chunks of only the fill value {arr.fill_value!r}: set "
            f"{ALLOW_MISSING_CHUNKS_ENV}=1 to read those as the fill value)"
        )
    return arr


def read_zarr(path: Path, axes: str | None, scene: int | str | None, time: int | None) -> tuple[
        np.ndarray, SceneInfo, bool]:
    """One scene (plate field) and time point of an OME-Zarr: ``(data (C, Z, Y, X) / (C, Y, X), info, several?)``.

    Raises:
        InputError: as :func:`describe_zarr`; scene or time not chosen when there are several;
            chunks missing from level 0; a read over the size limit; an unreadable chunk.
    """
    _no_axes(path, axes)
    version, entries, _ = _entries(path)
    names = [n for n, _ in entries]
    i = choose_scene(path, names, scene)
    info, source = _scene(entries[i][1], version, i, names[i])
    several = len(entries) > 1
    where = f"scene {info.name!r}: " if several else ""
    t = choose_time(path, info.n_time, time, f"{where}shape {info.shape}")
    check_allocation(path, info.nbytes, f"{where or 'the image '}(shape {info.shape}, {info.dtype})".strip())
    arr = _level0(path, source, where)
    index = tuple((t or 0) if a == "T" else slice(None) for a in source.letters)
    try:
        data = np.asarray(arr[index])
    except Exception as err:  # noqa: BLE001 - a corrupt chunk (codec error): one line
        raise InputError(f"{path}: {where}cannot read level 0: {type(err).__name__}: {err}") from None
    kept = source.letters.replace("T", "")
    data = _to_czyx(data, kept, info)
    return data, info, several


def open_zarr_lazy(path: Path, axes: str | None, scene: int | str | None, time: int | None) -> tuple[Any, SceneInfo]:
    """One scene (plate field) and time point of an OME-Zarr as a lazy ``(C, Z, Y, X)`` / ``(C, Y, X)`` view.

    Returns ``(view, info)``: a :class:`~labelfree_jax.imagefiles.lazy.LazyImage` over level 0
    (nothing read yet; each region read touches only its chunks) and the scene's
    :class:`SceneInfo`. No size limit applies (nothing is read whole).

    Raises:
        InputError: as :func:`read_zarr` (chunks missing from level 0 included), except the size limit.
    """
    from labelfree_jax.imagefiles.lazy import LazyImage

    _no_axes(path, axes)
    version, entries, _ = _entries(path)
    names = [n for n, _ in entries]
    i = choose_scene(path, names, scene)
    info, source = _scene(entries[i][1], version, i, names[i])
    where = f"scene {info.name!r}: " if len(entries) > 1 else ""
    t = choose_time(path, info.n_time, time, f"{where}shape {info.shape}")
    arr = _level0(path, source, where)
    fixed = {"T": t or 0} if "T" in source.letters else None
    return LazyImage(arr, source.letters, info.axes, fixed=fixed, path=path), info


def _to_czyx(data: np.ndarray, letters: str, info: SceneInfo) -> np.ndarray:
    """Stored axes ``letters`` (no T) -> ``info.axes`` (``CZYX`` / ``CYX``), native byte order."""
    if "C" not in letters:
        data, letters = data[np.newaxis], "C" + letters
    if "Z" not in letters:
        data, letters = data[:, np.newaxis], letters[0] + "Z" + letters[1:]
    order = [letters.index(a) for a in "CZYX"]
    data = np.transpose(data, order)
    if info.axes == "CYX":
        data = data[:, 0]
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    assert data.shape == info.shape, (data.shape, info.shape)
    return np.ascontiguousarray(data)

