"""Reading image files: TIFF / OME-TIFF / ImageJ-TIFF / CZI.

With :mod:`labelfree_jax.imagefiles.write`, the only place that knows file formats. Everything it returns is channel-first
in microscopy order: ``(C, Z, Y, X)`` for 3D, ``(C, Y, X)`` for 2D, always with a C axis
(C = 1 for a single-channel image). Pixel sizes are in micrometres as a dict with keys
``"z"``, ``"y"``, ``"x"`` (only the axes that are known, and no ``"z"`` for 2D).

Axis handling when reading (``tifffile`` reports the axes of the stored array after
dropping length-1 axes, so a single z-plane is a 2D image):

* ``C`` channel, ``Z`` depth, ``Y``/``X`` rows/columns, ``T`` time (only T = 1 accepted);
* ``S`` (samples per pixel, e.g. RGB or a planar multi-sample TIFF) is a channel axis;
* other letters tifffile uses for unknown axes (``Q``, ``I``, ...): a single one becomes
  ``Z`` (or ``C`` when there already is a Z), so a plain 3D TIFF without metadata is read
  as ZYX with one channel. Pass ``axes=`` (e.g. ``"CYX"``) to say what the stored axes are.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import tifffile

from labelfree_jax.core.errors import InputError

__all__ = [
    "Image",
    "read_array",
    "read_image",
    "select_channels",
]

logger = logging.getLogger(__name__)

_KNOWN_AXES = "TCZYX"
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


@dataclass
class Image:
    """An image read from a file.

    Attributes:
        data: ``(C, Z, Y, X)`` or ``(C, Y, X)``, the file's native dtype.
        axes: ``"CZYX"`` or ``"CYX"``.
        channel_names: one name per channel, or None when the file has none.
        pixel_sizes: µm per pixel, keys among ``"z"``, ``"y"``, ``"x"``; None when unknown.
        path: the file it came from (None when built in memory).
    """

    data: np.ndarray
    axes: str
    channel_names: list[str] | None = None
    pixel_sizes: dict[str, float] | None = None
    path: Path | None = field(default=None)

    def __post_init__(self) -> None:
        if self.axes not in ("CZYX", "CYX"):
            raise InputError(f"Image axes must be 'CZYX' or 'CYX'; got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise InputError(f"Image data shape {self.data.shape} does not match axes {self.axes!r}")
        if self.channel_names is not None and len(self.channel_names) != self.data.shape[0]:
            raise InputError(
                f"Image has {self.data.shape[0]} channels but {len(self.channel_names)} channel names"
            )

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes: 3 for CZYX, 2 for CYX."""
        return len(self.axes) - 1

    @property
    def n_channels(self) -> int:
        """Number of channels (size of the C axis)."""
        return int(self.data.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(Z, Y, X)`` or ``(Y, X)``."""
        return tuple(int(s) for s in self.data.shape[1:])


# ----------------------------------------------------------------------------- helpers


def _where(path: Path | None) -> str:
    return f"{path}" if path is not None else "<array>"


def _to_um(value: Any, unit: Any, what: str, path: Path | None) -> float | None:
    """Convert a length to µm; None (with a warning) when it is unusable."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        logger.warning("%s: ignoring non-numeric %s %r", _where(path), what, value)
        return None
    factor = 1.0
    if unit is not None and str(unit).strip() != "":
        key = str(unit).strip()
        factor = _UNIT_TO_UM.get(key, _UNIT_TO_UM.get(key.lower()))  # type: ignore[assignment]
        if factor is None:
            logger.warning("%s: ignoring %s with unknown unit %r", _where(path), what, unit)
            return None
    v *= factor
    if not (math.isfinite(v) and v > 0):
        logger.warning("%s: ignoring non-positive %s %r", _where(path), what, value)
        return None
    return v


def _validate_axes_arg(axes: str, shape: tuple[int, ...], path: Path | None) -> str:
    ax = axes.upper()
    bad = [a for a in ax if a not in _KNOWN_AXES]
    if bad:
        raise InputError(
            f"{_where(path)}: axes={axes!r} has unknown letters {bad}; use letters from "
            f"'{_KNOWN_AXES}' (e.g. 'ZYX', 'CYX', 'CZYX', 'ZCYX')"
        )
    if len(set(ax)) != len(ax):
        raise InputError(f"{_where(path)}: axes={axes!r} repeats a letter")
    if "Y" not in ax or "X" not in ax:
        raise InputError(f"{_where(path)}: axes={axes!r} must contain Y and X")
    if len(ax) != len(shape):
        raise InputError(
            f"{_where(path)}: axes={axes!r} has {len(ax)} letters but the stored array has "
            f"{len(shape)} axes (shape {shape})"
        )
    return ax


def _canonicalize(data: np.ndarray, axes: str, path: Path | None, *, user_axes: bool) -> tuple[np.ndarray, str]:
    """Reorder ``data`` with axes letters ``axes`` to (C, Z, Y, X) or (C, Y, X)."""
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise InputError(f"{_where(path)}: axes {axes!r} do not match the array shape {data.shape}")
    # drop length-1 axes that are neither Y nor X (C and Z are re-added / kept as needed)
    keep = [i for i, a in enumerate(axes) if data.shape[i] != 1 or a in "YX" or (a == "Z" and user_axes)]
    if len(keep) != data.ndim:
        data = data.reshape([data.shape[i] for i in keep])
        axes = "".join(axes[i] for i in keep)
    # samples are channels
    if "S" in axes:
        if "C" in axes:
            raise InputError(
                f"{_where(path)}: the image has both channels and samples per pixel (axes {axes}, "
                f"shape {data.shape}); this layout is not supported"
            )
        axes = axes.replace("S", "C")
    unknown = [a for a in axes if a not in _KNOWN_AXES]
    if unknown:
        if len(unknown) == 1 and "Z" not in axes:
            axes = axes.replace(unknown[0], "Z")
        elif len(unknown) == 1 and "C" not in axes:
            axes = axes.replace(unknown[0], "C")
        else:
            raise InputError(
                f"{_where(path)}: cannot tell what the axes of the stored array are (tifffile reports "
                f"{axes!r} for shape {data.shape}); pass axes=..., e.g. axes='CZYX'"
            )
    if "T" in axes:
        n_t = data.shape[axes.index("T")]
        raise InputError(
            f"{_where(path)}: time series with {n_t} time points (axes {axes}, shape {data.shape}) are "
            f"not supported; save a single time point"
        )
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{_where(path)}: image axes {axes!r} (shape {data.shape}) lack Y or X")
    if "C" not in axes:
        data = data[np.newaxis]
        axes = "C" + axes
    target = "CZYX" if "Z" in axes else "CYX"
    data = np.transpose(data, [axes.index(a) for a in target])
    return np.ascontiguousarray(data), target


def select_channels(image: Image, channels: int | str | Sequence[int | str] | None) -> Image:
    """Keep the given channels (indices or names, in the given order); the C axis stays.

    Raises:
        InputError: an index out of range or an unknown name (the message lists what exists).
    """
    if channels is None:
        return image
    items = [channels] if isinstance(channels, (int, str, np.integer)) else list(channels)
    if not items:
        raise InputError(f"{_where(image.path)}: empty channel selection")
    n = image.n_channels
    idx = []
    for ch in items:
        if isinstance(ch, (bool, np.bool_)):
            raise InputError(f"{_where(image.path)}: channel {ch!r} is not an index or a name")
        if isinstance(ch, (int, np.integer)):
            if not 0 <= int(ch) < n:
                raise InputError(
                    f"{_where(image.path)}: channel index {int(ch)} out of range; the image has {n} "
                    f"channel(s) (0..{n - 1})"
                    + (f": {image.channel_names}" if image.channel_names else "")
                )
            idx.append(int(ch))
        elif isinstance(ch, str):
            if not image.channel_names:
                raise InputError(
                    f"{_where(image.path)}: channel {ch!r} selected by name, but the file has no channel "
                    f"names; select by index (0..{n - 1})"
                )
            if ch not in image.channel_names:
                raise InputError(
                    f"{_where(image.path)}: no channel named {ch!r}; available channels: {image.channel_names}"
                )
            idx.append(image.channel_names.index(ch))
        else:
            raise InputError(f"{_where(image.path)}: channel {ch!r} is not an index or a name")
    names = [image.channel_names[i] for i in idx] if image.channel_names else None
    return Image(
        data=np.ascontiguousarray(image.data[idx]),
        axes=image.axes,
        channel_names=names,
        pixel_sizes=image.pixel_sizes,
        path=image.path,
    )


def _finish_pixel_sizes(ps: dict[str, float | None], axes: str) -> dict[str, float] | None:
    spatial = [a.lower() for a in axes[1:]]
    out = {k: float(ps[k]) for k in spatial if ps.get(k) is not None}  # ordered z, y, x
    return out or None


# ----------------------------------------------------------------------------- TIFF


def _ome_info(tif: tifffile.TiffFile, path: Path) -> tuple[list[str] | None, dict[str, float | None]]:
    """Channel names and pixel sizes (µm) of the first OME image."""
    try:
        meta = tifffile.xml2dict(tif.ome_metadata or "")
    except Exception as err:  # noqa: BLE001 - malformed XML (any parser error): keep the pixels, drop the metadata
        logger.warning("%s: cannot parse OME metadata (%s); ignoring it", path, err)
        return None, {}
    image = meta.get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0] if image else {}
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    if not isinstance(pixels, dict):
        return None, {}
    ps: dict[str, float | None] = {}
    for ax in ("X", "Y", "Z"):
        if f"PhysicalSize{ax}" in pixels:
            ps[ax.lower()] = _to_um(
                pixels[f"PhysicalSize{ax}"], pixels.get(f"PhysicalSize{ax}Unit"), f"PhysicalSize{ax}", path
            )
    chans = pixels.get("Channel")
    if isinstance(chans, dict):
        chans = [chans]
    names = None
    if isinstance(chans, list) and chans and all(isinstance(c, dict) and "Name" in c for c in chans):
        names = [str(c["Name"]) for c in chans]
    return names, ps


def _imagej_pixel_sizes(tif: tifffile.TiffFile, path: Path) -> dict[str, float | None]:
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    ps: dict[str, float | None] = {}
    if "spacing" in ij and unit:
        ps["z"] = _to_um(ij["spacing"], unit, "ImageJ spacing", path)
    page = tif.pages.first
    for tag, ax in (("XResolution", "x"), ("YResolution", "y")):
        t = page.tags.get(tag)
        if t is None:
            continue
        num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
        if num and den and unit:
            ps[ax] = _to_um(den / num, unit, f"ImageJ {tag}", path)
    return ps


def _tiff_resolution_pixel_sizes(tif: tifffile.TiffFile, path: Path) -> dict[str, float | None]:
    """Pixel sizes from XResolution/YResolution, only when the unit is centimetre."""
    page = tif.pages.first
    unit = page.tags.get("ResolutionUnit")
    if unit is None or int(unit.value) != 3:  # 3 = centimetre; inch (2) is usually a bogus 72 dpi
        return {}
    ps: dict[str, float | None] = {}
    for tag, ax in (("XResolution", "x"), ("YResolution", "y")):
        t = page.tags.get(tag)
        if t is not None:
            num, den = t.value
            if num and den:
                ps[ax] = _to_um(den / num, "cm", tag, path)
    return ps


def _check_complete(tif: tifffile.TiffFile, data: np.ndarray, path: Path) -> None:
    """Raise InputError when the file is truncated or its metadata promises more pixels.

    tifffile reads what it can from a damaged file (a shorter IFD chain, pixel data past
    the end of the file) and may silently return a smaller array; this catches that.
    """
    file_size = path.stat().st_size
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for off, cnt in zip(offsets, counts):
            if off + cnt > file_size:
                raise InputError(
                    f"{path}: the file is truncated: pixel data at bytes {off}..{off + cnt} lies past "
                    f"its end ({file_size} bytes)"
                )
    expected = None
    if tif.is_ome:
        try:
            meta = tifffile.xml2dict(tif.ome_metadata or "")
            image = meta["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            expected = 1
            for k in ("SizeX", "SizeY", "SizeZ", "SizeC", "SizeT"):
                expected *= int(pixels.get(k, 1))
        except Exception:  # noqa: BLE001 - unreadable OME metadata is reported by _ome_info
            expected = None
    elif tif.is_imagej:
        ij = tif.imagej_metadata or {}
        page = tif.pages.first
        if "images" in ij:
            expected = int(ij["images"]) * int(np.prod(page.shape))
    if expected is not None and expected != data.size:
        raise InputError(
            f"{path}: the file is truncated or damaged: its metadata describes {expected} pixel values "
            f"but only {data.size} could be read (shape {data.shape})"
        )


class _TiffErrorLog(logging.Handler):
    """Collects the errors tifffile logs (in this thread) while it recovers from a damaged file."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())

    def __enter__(self) -> Self:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)


_DAMAGE_WORDS = ("offset", "corrupt", "truncat", "failed to read")


def _read_tiff(path: Path, axes: str | None) -> Image:
    with _TiffErrorLog() as errlog:
        image = _read_tiff_inner(path, axes)
    damage = [m for m in errlog.messages if any(w in m.lower() for w in _DAMAGE_WORDS)]
    if damage:
        raise InputError(f"{path}: the TIFF file is damaged or truncated: {damage[0]}")
    for m in errlog.messages:
        logger.warning("%s: tifffile: %s", path, m)
    return image


def _read_tiff_inner(path: Path, axes: str | None) -> Image:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError(f"{path}: the TIFF file holds no images")
        series = tif.series[0]
        if len(tif.series) > 1:
            logger.info("%s: %d image series; reading the first", path, len(tif.series))
        data = series.asarray()
        stored_axes = series.axes
        _check_complete(tif, data, path)
        names: list[str] | None = None
        ps: dict[str, float | None] = {}
        if tif.is_ome:
            names, ps = _ome_info(tif, path)
        elif tif.is_imagej:
            ps = _imagej_pixel_sizes(tif, path)
        else:
            ps = _tiff_resolution_pixel_sizes(tif, path)
    if data.size == 0:
        raise InputError(f"{path}: the image is empty (shape {data.shape})")
    if axes is not None:
        ax = _validate_axes_arg(axes, tuple(data.shape), path)
        data, out_axes = _canonicalize(data, ax, path, user_axes=True)
    else:
        data, out_axes = _canonicalize(data, stored_axes, path, user_axes=False)
    if names is not None and len(names) != data.shape[0]:
        logger.info("%s: %d channel names for %d channels; ignoring the names", path, len(names), data.shape[0])
        names = None
    return Image(
        data=data, axes=out_axes, channel_names=names, pixel_sizes=_finish_pixel_sizes(ps, out_axes), path=path
    )


# ----------------------------------------------------------------------------- CZI


def _czi_info(meta: Any, path: Path) -> tuple[list[str] | None, dict[str, float | None]]:
    def get(d: Any, *keys: str) -> Any:
        for k in keys:
            if not isinstance(d, dict):
                return None
            d = d.get(k)
        return d

    root = get(meta, "ImageDocument", "Metadata")
    ps: dict[str, float | None] = {}
    dist = get(root, "Scaling", "Items", "Distance")
    if isinstance(dist, dict):
        dist = [dist]
    for d in dist or []:
        if isinstance(d, dict) and str(d.get("Id", "")).upper() in ("X", "Y", "Z") and "Value" in d:
            # CZI scaling values are metres per pixel
            ps[str(d["Id"]).lower()] = _to_um(d["Value"], "m", f"CZI scaling {d['Id']}", path)
    chans = get(root, "Information", "Image", "Dimensions", "Channels", "Channel")
    if isinstance(chans, dict):
        chans = [chans]
    names = None
    if isinstance(chans, list) and chans and all(isinstance(c, dict) and "Name" in c for c in chans):
        names = [str(c["Name"]) for c in chans]
    return names, ps


def _read_czi(path: Path, axes: str | None) -> Image:
    try:
        import czifile
    except ImportError:
        raise InputError(
            f"{path}: reading CZI files needs the 'czifile' package: pip install labelfree-jax[czi]"
        ) from None
    with czifile.CziFile(str(path)) as czi:
        data = czi.asarray()
        stored_axes = czi.axes
        try:
            meta = czi.metadata(raw=False)
        except Exception as err:  # noqa: BLE001 - czifile raises many types on bad metadata: keep the pixels
            logger.warning("%s: cannot read CZI metadata (%s); ignoring it", path, err)
            meta = {}
    # czifile: '0' is samples per pixel; B, S (scene), V, H, M, R, I are other dimensions
    stored_axes = stored_axes.replace("0", "S") if "C" not in stored_axes else stored_axes
    names, ps = _czi_info(meta, path)
    if axes is not None:
        ax = _validate_axes_arg(axes, tuple(data.shape), path)
        data, out_axes = _canonicalize(data, ax, path, user_axes=True)
    else:
        # drop length-1 extra dimensions first; any other extra dimension is an error
        keep = [i for i, a in enumerate(stored_axes) if a in "CZYXS" or data.shape[i] != 1]
        data = data.reshape([data.shape[i] for i in keep])
        stored_axes = "".join(stored_axes[i] for i in keep)
        extra = [a for a in stored_axes if a not in "CZYXS"]
        if extra:
            raise InputError(
                f"{path}: CZI dimensions {extra} (axes {stored_axes}, shape {data.shape}) are not supported; "
                f"export a single scene/time point"
            )
        data, out_axes = _canonicalize(data, stored_axes, path, user_axes=False)
    if names is not None and len(names) != data.shape[0]:
        names = None
    return Image(
        data=data, axes=out_axes, channel_names=names, pixel_sizes=_finish_pixel_sizes(ps, out_axes), path=path
    )


# ----------------------------------------------------------------------------- public


def read_image(
    path: str | os.PathLike[str],
    *,
    channels: int | str | Sequence[int | str] | None = None,
    axes: str | None = None,
) -> Image:
    """Read a TIFF / OME-TIFF / ImageJ-TIFF / CZI file as a channel-first :class:`Image`.

    Args:
        path: the file. ``.czi`` is read with ``czifile`` (optional dependency), anything
            else as TIFF.
        channels: keep only these channels: an index, an OME channel name, or a list of
            them (order kept). None keeps all.
        axes: what the axes of the stored array are (letters from ``TCZYX``, one per axis of
            the array tifffile reports after dropping length-1 axes), e.g. ``"CYX"`` for a
            3D TIFF that is a stack of channels. None uses the file's metadata, reading a
            plain 3D stack as ZYX.

    Returns:
        :class:`Image` with ``data`` ``(C, Z, Y, X)`` or ``(C, Y, X)`` in the file's dtype,
        channel names (OME / CZI) and pixel sizes in µm (OME PhysicalSize*, ImageJ
        spacing/resolution, CZI scaling) when the file has them.

    Raises:
        InputError: missing, unreadable, corrupt or empty file; bad ``axes``; bad channel
            selection. The message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty (0 bytes)")
    try:
        if p.suffix.lower() == ".czi":
            image = _read_czi(p, axes)
        else:
            image = _read_tiff(p, axes)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as err:
        kind = "CZI" if p.suffix.lower() == ".czi" else "TIFF"
        raise InputError(f"{p}: cannot read as {kind}: {type(err).__name__}: {err}") from err
    image = select_channels(image, channels)
    logger.debug("read %s: %s %s %s", p, image.axes, image.data.shape, image.data.dtype)
    return image


def read_array(path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Read a file (as :func:`read_image`, same keyword arguments) as float32 ``(C, *spatial)``."""
    return read_image(path, **kwargs).data.astype(np.float32, copy=False)
