"""TIFF, OME-TIFF and ImageJ-TIFF files (read with ``tifffile``; LZW/Deflate/zstd via ``imagecodecs``).

Each tifffile *series* is a scene (an OME-TIFF ``<Image>``, or a differently shaped image in a
plain TIFF). Everything a read needs is decided from the metadata first, and these are refused
before any pixel array is allocated (one line naming the file):

* pixel data past the end of the file (a truncated file);
* declared pixels that cannot fit in the file: more bytes than the file holds when it is not
  compressed, or more than the codec's largest possible ratio allows when it is (deflate, LZW,
  PackBits; codecs without a bound, e.g. zstd, are held only to the size limit);
* an OME-TIFF whose metadata declares more planes than the file stores (tifffile would fill the
  missing planes with zeros), or whose sizes do not match the stored pixels;
* a read over :data:`labelfree_jax.imagefiles.info.MAX_IMAGE_BYTES`;
* a page with fewer than 2 rows or columns (nothing can be predicted on it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.axes import (
    MIN_SPATIAL_SIZE,
    Layout,
    plan_layout,
    to_um,
    too_small_message,
    validate_axes_arg,
)
from labelfree_jax.imagefiles.info import (
    SceneInfo,
    check_allocation,
    choose_scene,
    choose_time,
    human_bytes,
    pixel_size_notes,
    scene_names,
)
from labelfree_jax.imagefiles.ome import OmeImage, parse_ome

__all__ = ["describe_tiff", "read_tiff"]

logger = logging.getLogger(__name__)

# Largest compression ratio each bounded codec can reach (with a margin): deflate 1032:1,
# TIFF LZW (12-bit codes, reset at 4094) about 1200:1, PackBits 64:1.
_MAX_RATIO = {5: 2000.0, 8: 1500.0, 32946: 1500.0, 32773: 130.0}
_DAMAGE_WORDS = ("offset", "corrupt", "truncat", "failed to read")


class _TiffLog(logging.Filter):
    """Takes the messages tifffile logs in this thread while a file is read (they are reported by us)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread or record.levelno < logging.WARNING:
            return True
        (self.errors if record.levelno >= logging.ERROR else self.warnings).append(record.getMessage())
        return False

    def __enter__(self) -> Self:
        logging.getLogger("tifffile").addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeFilter(self)

    def check(self, path: Path) -> list[str]:
        """Raise on a damage message; the other messages as warnings."""
        damage = [m for m in self.errors if any(w in m.lower() for w in _DAMAGE_WORDS)]
        if damage:
            raise InputError(f"{path}: the TIFF file is damaged or truncated: {damage[0]}")
        return [f"tifffile: {m}" for m in self.errors + self.warnings]


@dataclass(frozen=True)
class _Scene:
    info: SceneInfo
    layout: Layout
    series_index: int


# ----------------------------------------------------------------------------- metadata


def _ome_images(tif: tifffile.TiffFile, notes: list[str]) -> list[OmeImage]:
    try:
        return parse_ome(tif.ome_metadata or "")
    except Exception as err:  # noqa: BLE001 - malformed XML (any parser error): keep the pixels, drop the metadata
        notes.append(f"cannot parse the OME metadata ({err}); ignoring it")
        return []


def _ome_for_series(images: list[OmeImage], series: list[tifffile.TiffPageSeries], i: int) -> OmeImage | None:
    """The OME image of series ``i``: by position when the counts agree, else by a unique name."""
    if len(images) == len(series):
        return images[i]
    matches = [im for im in images if im.name is not None and im.name == series[i].name]
    return matches[0] if len(matches) == 1 else None


def _ome_pixel_sizes(image: OmeImage, notes: list[str]) -> dict[str, float | None]:
    ps: dict[str, float | None] = {}
    for ax in ("X", "Y", "Z"):
        if f"PhysicalSize{ax}" in image.pixels:
            ps[ax.lower()] = to_um(
                image.pixels[f"PhysicalSize{ax}"], image.pixels.get(f"PhysicalSize{ax}Unit"), f"PhysicalSize{ax}", notes
            )
    return ps


def _resolution(page: tifffile.TiffPage, unit: str, notes: list[str], what: str) -> dict[str, float | None]:
    ps: dict[str, float | None] = {}
    for tag, ax in (("XResolution", "x"), ("YResolution", "y")):
        t = page.tags.get(tag)
        if t is None:
            continue
        num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
        if num and den:
            ps[ax] = to_um(den / num, unit, f"{what} {tag}", notes)
    return ps


def _imagej_pixel_sizes(tif: tifffile.TiffFile, notes: list[str]) -> dict[str, float | None]:
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    if not unit:
        return {}
    ps = _resolution(tif.pages.first, unit, notes, "ImageJ")
    if "spacing" in ij:
        ps["z"] = to_um(ij["spacing"], unit, "ImageJ spacing", notes)
    return ps


def _tiff_resolution_pixel_sizes(tif: tifffile.TiffFile, notes: list[str]) -> dict[str, float | None]:
    """Pixel sizes from XResolution/YResolution, only when the unit is centimetre."""
    unit = tif.pages.first.tags.get("ResolutionUnit")
    if unit is None or int(unit.value) != 3:  # 3 = centimetre; inch (2) is usually a bogus 72 dpi
        return {}
    return _resolution(tif.pages.first, "cm", notes, "TIFF")


def _finish_pixel_sizes(ps: dict[str, float | None], axes: str) -> dict[str, float] | None:
    spatial = [a.lower() for a in axes[1:]]
    out = {k: float(ps[k]) for k in spatial if ps.get(k) is not None}  # ordered z, y, x
    return out or None


# ----------------------------------------------------------------------------- checks before reading


def _check_offsets(series: tifffile.TiffPageSeries, path: Path) -> None:
    """Pixel data past the end of its file: a truncated file."""
    for page in series.pages:
        if page is None:
            continue
        file_size = page.parent.filehandle.size
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for off, cnt in zip(offsets, counts):
            if off + cnt > file_size:
                raise InputError(
                    f"{path}: the file is truncated: pixel data at bytes {off}..{off + cnt} lies past "
                    f"its end ({file_size} bytes)"
                )


def _check_declared_size(series: tifffile.TiffPageSeries, path: Path, label: str) -> None:
    """Declared pixels that cannot be in the file (or the files, for a multi-file OME-TIFF) holding them."""
    sizes = {id(p.parent): p.parent.filehandle.size for p in series.pages if p is not None}
    file_size = sum(sizes.values()) or path.stat().st_size
    declared = math.prod(series.shape) * series.dtype.itemsize
    compression = int(getattr(series.keyframe, "compression", 1))
    if compression == 1:
        limit, how = float(file_size), "uncompressed"
    elif compression in _MAX_RATIO:
        limit, how = file_size * _MAX_RATIO[compression], f"compressed at most {_MAX_RATIO[compression]:.0f}:1"
    else:
        return
    if declared > limit:
        raise InputError(
            f"{path}: {label}the metadata declares {human_bytes(declared)} of pixels (shape {tuple(series.shape)}, "
            f"{series.dtype}) but the file is only {human_bytes(file_size)} ({how}); it is truncated or its "
            f"metadata is wrong"
        )


def _check_planes(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, image: OmeImage | None, path: Path,
                  label: str) -> None:
    """OME planes declared but not stored; OME / ImageJ sizes that do not match the stored pixels."""
    missing = sum(p is None for p in series.pages)
    if missing:
        stored = len(series.pages) - missing
        raise InputError(
            f"{path}: {label}the OME metadata declares {len(series.pages)} planes but the file stores only "
            f"{stored}; refusing to read it (the missing planes would be zeros)"
        )
    expected = None
    if image is not None:
        try:
            expected = math.prod(image.size(a) for a in "XYZCT")
        except ValueError:
            expected = None
    elif tif.is_imagej and "images" in (tif.imagej_metadata or {}):
        expected = int(tif.imagej_metadata["images"]) * math.prod(tif.pages.first.shape)
    size = math.prod(series.shape)
    if expected is not None and expected != size:
        raise InputError(
            f"{path}: {label}the file is truncated or damaged: its metadata describes {expected} pixel values "
            f"but only {size} could be read (shape {tuple(series.shape)})"
        )


# ----------------------------------------------------------------------------- scenes


def _scene_metadata(tif: tifffile.TiffFile, image: OmeImage | None, notes: list[str]) -> tuple[
        list[str] | None, dict[str, float | None]]:
    if image is not None:
        return image.channel_names, _ome_pixel_sizes(image, notes)
    if tif.is_imagej:
        return None, _imagej_pixel_sizes(tif, notes)
    if tif.is_ome:
        return None, {}
    return None, _tiff_resolution_pixel_sizes(tif, notes)


def _describe_series(tif: tifffile.TiffFile, i: int, name: str, image: OmeImage | None, path: Path,
                     axes: str | None, label: str) -> _Scene:
    series = tif.series[i]
    _check_offsets(series, path)
    _check_declared_size(series, path, label)
    _check_planes(tif, series, image, path, label)
    shape = tuple(int(s) for s in series.shape)
    kf = series.keyframe
    if axes is None and min(int(kf.imagelength), int(kf.imagewidth)) < MIN_SPATIAL_SIZE:
        raise InputError(too_small_message(path, shape, series.axes, subject=f"{label}the image",
                                           axes_label="tifffile axes"))
    if axes is not None:
        layout = plan_layout(shape, validate_axes_arg(axes, shape, path), path, user_axes=True)
    else:
        layout = plan_layout(shape, series.axes, path, user_axes=False)
    notes = list(layout.warnings)
    names, ps = _scene_metadata(tif, image, notes)
    if names is not None and len(names) != layout.out_shape[0]:
        notes.append(f"{len(names)} channel names for {layout.out_shape[0]} channels; ignoring the names")
        names = None
    pixel_sizes = _finish_pixel_sizes(ps, layout.out_axes)
    notes += pixel_size_notes(layout.out_axes, pixel_sizes)
    info = SceneInfo(
        index=i,
        name=name,
        axes=layout.out_axes,
        shape=layout.out_shape,
        dtype=series.dtype.newbyteorder("="),
        channel_names=tuple(names) if names is not None else None,
        pixel_sizes=pixel_sizes,
        n_time=layout.n_time,
        warnings=tuple(notes),
    )
    return _Scene(info=info, layout=layout, series_index=i)


def _format(tif: tifffile.TiffFile) -> str:
    return "OME-TIFF" if tif.is_ome else "ImageJ-TIFF" if tif.is_imagej else "TIFF"


def _describe(tif: tifffile.TiffFile, path: Path, axes: str | None, only: int | str | None = None,
              choose: bool = False) -> list[_Scene]:
    """The scenes of an open file (all of them, or with ``choose`` only the one ``only`` names)."""
    if not tif.series:
        raise InputError(f"{path}: the TIFF file holds no images")
    notes: list[str] = []
    images = _ome_images(tif, notes) if tif.is_ome else []
    series = list(tif.series)
    raw = [im.name if (im := _ome_for_series(images, series, i)) is not None else None for i in range(len(series))]
    names = scene_names(raw)
    indices = [choose_scene(path, names, only)] if choose else range(len(series))
    scenes = []
    for i in indices:
        label = f"scene {i} ({names[i]!r}): " if len(series) > 1 else ""
        s = _describe_series(tif, i, names[i], _ome_for_series(images, series, i), path, axes, label)
        scenes.append(dataclasses.replace(s, info=dataclasses.replace(s.info, warnings=tuple(notes) + s.info.warnings)))
    return scenes


def describe_tiff(path: Path, axes: str | None = None) -> tuple[str, list[SceneInfo]]:
    """The format (``"OME-TIFF"``, ``"ImageJ-TIFF"`` or ``"TIFF"``) and scenes of a TIFF file, no pixels read.

    Raises:
        InputError: see the module docstring.
    """
    with _TiffLog() as log, tifffile.TiffFile(path) as tif:
        fmt = _format(tif)
        scenes = _describe(tif, path, axes)
    extra = tuple(log.check(path))
    return fmt, [dataclasses.replace(s.info, warnings=s.info.warnings + extra) for s in scenes]


# ----------------------------------------------------------------------------- pixels


def _time_pages(series: tifffile.TiffPageSeries, time_axis: int, t: int) -> tuple[list[int], tuple[int, ...]] | None:
    """The page indices of time point ``t`` and the shape they form (T kept, length 1); None: not page-aligned."""
    shape = tuple(int(s) for s in series.shape)
    page_shape = tuple(int(s) for s in series.keyframe.shape)
    n_lead = len(shape) - len(page_shape)
    if n_lead <= time_axis or shape[n_lead:] != page_shape or len(series.pages) != math.prod(shape[:n_lead]):
        return None
    index = np.arange(len(series.pages)).reshape(shape[:n_lead])
    key = np.take(index, [t], axis=time_axis).ravel().tolist()
    return key, shape[:time_axis] + (1,) + shape[time_axis + 1:]


def _read_pixels(tif: tifffile.TiffFile, scene: _Scene, t: int | None, path: Path) -> np.ndarray:
    series = tif.series[scene.series_index]
    layout = scene.layout
    pages = _time_pages(series, layout.time_axis, t) if layout.time_axis is not None and t is not None else None
    shape = pages[1] if pages is not None else layout.stored_shape
    what = f"scene {scene.info.name!r}" if len(tif.series) > 1 else "the image"
    what += f", time point {t}" if pages is not None else (" (all time points)" if layout.n_time > 1 else "")
    check_allocation(path, math.prod(shape) * series.dtype.itemsize, f"{what} (shape {shape}, {series.dtype})")
    if pages is not None:
        data = tif.asarray(key=pages[0], series=scene.series_index).reshape(shape)
        return layout.apply(data, 0)
    data = series.asarray()
    if tuple(data.shape) != layout.stored_shape:
        raise InputError(
            f"{path}: the file is truncated or damaged: its metadata describes shape {layout.stored_shape} "
            f"but {tuple(data.shape)} could be read"
        )
    return layout.apply(data, t)


def read_tiff(path: Path, axes: str | None, scene: int | str | None, time: int | None) -> tuple[
        np.ndarray, SceneInfo, bool]:
    """One scene and time point of a TIFF file: ``(data, scene info, several scenes?)``.

    ``data`` is ``info.shape`` in native byte order; ``info.warnings`` includes tifffile's own
    warnings about the file.

    Raises:
        InputError: see the module docstring; scene or time not chosen when there are several.
    """
    with _TiffLog() as log, tifffile.TiffFile(path) as tif:
        chosen = _describe(tif, path, axes, scene, choose=True)[0]
        what = f"axes {chosen.layout.stored_axes}, shape {chosen.layout.stored_shape}"
        t = choose_time(path, chosen.info.n_time, time, what)
        data = _read_pixels(tif, chosen, t, path)
        several = len(tif.series) > 1
    info = dataclasses.replace(chosen.info, warnings=chosen.info.warnings + tuple(log.check(path)))
    return data, info, several
