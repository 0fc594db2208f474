"""Reading image files: TIFF / OME-TIFF / ImageJ-TIFF / CZI / OME-Zarr, one scene and one time point at a time.

With :mod:`labelfree_jax.imagefiles.write`, the only place that knows file formats (the formats
themselves: :mod:`.tiff`, :mod:`.czi`, :mod:`.zarr_read`; axis rules: :mod:`.axes`). Everything it returns is
channel-first in microscopy order: ``(C, Z, Y, X)`` for 3D, ``(C, Y, X)`` for 2D, always with a
C axis (C = 1 for a single-channel image). Pixel sizes are in micrometres as a dict with keys
``"z"``, ``"y"``, ``"x"`` (only the axes that are known, and no ``"z"`` for 2D).

Choose, never guess silently: a file with several scenes or time points must be told which one
to read (``scene=``, ``time=``); every assumption made while reading (axes guessed without
metadata, a probably channels-last plain TIFF, unknown pixel sizes, metadata ignored) is an
entry of :attr:`Image.warnings` and a WARNING log line naming the file. :func:`describe_image`
says what a file holds without reading pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.axes import where
from labelfree_jax.imagefiles.czi import describe_czi, read_czi
from labelfree_jax.imagefiles.info import ImageInfo
from labelfree_jax.imagefiles.tiff import describe_tiff, read_tiff
from labelfree_jax.imagefiles.zarr_read import describe_zarr, is_zarr, read_zarr

__all__ = [
    "Image",
    "describe_image",
    "read_array",
    "read_image",
    "select_channels",
]

logger = logging.getLogger(__name__)


@dataclass
class Image:
    """An image read from a file (one scene, one time point).

    Attributes:
        data: ``(C, Z, Y, X)`` or ``(C, Y, X)``, the file's dtype in native byte order.
        axes: ``"CZYX"`` or ``"CYX"``.
        channel_names: one name per channel, or None when the file has none.
        pixel_sizes: µm per pixel, keys among ``"z"``, ``"y"``, ``"x"``; None when unknown
            (a partial dict when only some are known).
        path: the file it came from (None when built in memory).
        warnings: the assumptions made while reading (e.g. ``"no axes metadata: read the 3 axes
            of shape (5, 8, 9) as ZYX; ..."``), without the file name.
        scene: the scene / series name when the file has several, else None.
    """

    data: np.ndarray
    axes: str
    channel_names: list[str] | None = None
    pixel_sizes: dict[str, float] | None = None
    path: Path | None = field(default=None)
    warnings: tuple[str, ...] = ()
    scene: str | None = None

    def __post_init__(self) -> None:
        if self.axes not in ("CZYX", "CYX"):
            raise InputError(f"Image axes must be 'CZYX' or 'CYX'; got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise InputError(f"Image data shape {self.data.shape} does not match axes {self.axes!r}")
        if self.channel_names is not None and len(self.channel_names) != self.data.shape[0]:
            raise InputError(
                f"Image has {self.data.shape[0]} channels but {len(self.channel_names)} channel names"
            )
        self.warnings = tuple(self.warnings)

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


def _channel_index(image: Image, ch: Any) -> int:
    n = image.n_channels
    if isinstance(ch, (bool, np.bool_)):
        raise InputError(f"{where(image.path)}: channel {ch!r} is not an index or a name")
    if isinstance(ch, (int, np.integer)):
        if not 0 <= int(ch) < n:
            raise InputError(
                f"{where(image.path)}: channel index {int(ch)} out of range; the image has {n} "
                f"channel(s) (0..{n - 1})"
                + (f": {image.channel_names}" if image.channel_names else "")
            )
        return int(ch)
    if isinstance(ch, str):
        if not image.channel_names:
            raise InputError(
                f"{where(image.path)}: channel {ch!r} selected by name, but the file has no channel "
                f"names; select by index (0..{n - 1})"
            )
        if ch not in image.channel_names:
            raise InputError(
                f"{where(image.path)}: no channel named {ch!r}; available channels: {image.channel_names}"
            )
        return image.channel_names.index(ch)
    raise InputError(f"{where(image.path)}: channel {ch!r} is not an index or a name")


def select_channels(image: Image, channels: int | str | Sequence[int | str] | None) -> Image:
    """Keep the given channels (indices or names, in the given order); the C axis stays.

    Raises:
        InputError: an index out of range or an unknown name (the message lists what exists).
    """
    if channels is None:
        return image
    items = [channels] if isinstance(channels, (int, str, np.integer)) else list(channels)
    if not items:
        raise InputError(f"{where(image.path)}: empty channel selection")
    idx = [_channel_index(image, ch) for ch in items]
    names = [image.channel_names[i] for i in idx] if image.channel_names else None
    return Image(
        data=np.ascontiguousarray(image.data[idx]),
        axes=image.axes,
        channel_names=names,
        pixel_sizes=image.pixel_sizes,
        path=image.path,
        warnings=image.warnings,
        scene=image.scene,
    )


def _checked_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if is_zarr(p):
        return p
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty (0 bytes)")
    return p


def _is_czi(p: Path) -> bool:
    return p.suffix.lower() == ".czi"


def _wrap_errors(p: Path, err: Exception) -> InputError:
    kind = "CZI" if _is_czi(p) else "OME-Zarr" if p.is_dir() else "TIFF"
    return InputError(f"{p}: cannot read as {kind}: {type(err).__name__}: {err}")


def describe_image(path: str | os.PathLike[str], *, axes: str | None = None) -> ImageInfo:
    """What a file holds, from its metadata only (no pixel data is read).

    Args:
        path: a TIFF / OME-TIFF / ImageJ-TIFF / CZI file or an OME-Zarr folder (image, plate or well).
        axes: as for :func:`read_image` (TIFF only): the stored axes, for a file without axis
            metadata.

    Returns:
        :class:`~labelfree_jax.imagefiles.info.ImageInfo`: the format and one
        :class:`~labelfree_jax.imagefiles.info.SceneInfo` per scene (index, name, axes and shape
        of one time point as :func:`read_image` returns it, dtype, channel names, pixel sizes,
        number of time points, and the warnings reading it would give; they are not logged here);
        for an OME-Zarr plate one scene per field (``"A/1/0"``) and the plate's layout
        (:attr:`~labelfree_jax.imagefiles.info.ImageInfo.plate`).

    Raises:
        InputError: missing, unreadable, corrupt or empty file, or metadata declaring pixels the
            file cannot hold (see :func:`read_image`). The message names the file.
    """
    p = _checked_path(path)
    try:
        if p.is_dir():
            fmt, scenes, plate = describe_zarr(p, axes)
            return ImageInfo(path=p, format=fmt, scenes=tuple(scenes), plate=plate)
        if _is_czi(p):
            fmt, scenes = "CZI", describe_czi(p, axes)
        else:
            fmt, scenes = describe_tiff(p, axes)
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise _wrap_errors(p, err) from err
    return ImageInfo(path=p, format=fmt, scenes=tuple(scenes))


def read_image(
    path: str | os.PathLike[str],
    *,
    channels: int | str | Sequence[int | str] | None = None,
    axes: str | None = None,
    scene: int | str | None = None,
    time: int | None = None,
) -> Image:
    """Read one scene and time point of a TIFF / OME-TIFF / ImageJ-TIFF / CZI file as a channel-first :class:`Image`.

    Args:
        path: the file. ``.czi`` is read with ``pylibCZIrw`` (optional dependency), an OME-Zarr
            folder (NGFF 0.4 / 0.5 image, HCS plate or well: level 0, see
            :mod:`~labelfree_jax.imagefiles.zarr_read`) with ome-zarr-py, anything else as TIFF (uncompressed, LZW, Deflate, zstd, ... via imagecodecs).
        channels: keep only these channels: an index, a channel name (OME / CZI), or a list of
            them (order kept). None keeps all.
        axes: what the axes of the stored array are (letters from ``TCZYX``, one per axis of
            the array tifffile reports after dropping length-1 axes), e.g. ``"CYX"`` for a
            3D TIFF that is a stack of channels, ``"YXC"`` for a channels-last plain TIFF. None
            uses the file's metadata, reading a plain 3D stack as ZYX (with a warning).
            TIFF only.
        scene: which scene (CZI scene, OME-TIFF image / TIFF series, OME-Zarr plate field
            ``"<row>/<column>/<field>"``): an index, a name (see
            :func:`describe_image`), or a string of digits used as an index. Required when the
            file has several.
        time: which time point (index). Required when the scene has several.

    Returns:
        :class:`Image` with ``data`` ``(C, Z, Y, X)`` or ``(C, Y, X)`` in the file's dtype,
        channel names (OME / CZI) and pixel sizes in µm (OME PhysicalSize*, ImageJ
        spacing/resolution, CZI scaling) when the file has them, the ``warnings`` (each also
        logged at WARNING with the file name) and the ``scene`` name when there are several.

    Raises:
        InputError: missing, unreadable, corrupt or empty file; several scenes or time points
            and none chosen (the message lists them and says how to choose); metadata
            declaring more planes or bytes than the file stores; a read over the size limit
            (:data:`~labelfree_jax.imagefiles.info.MAX_IMAGE_BYTES`); Y or X shorter than 2
            pixels (too small to predict on); bad ``axes``; bad channel selection. The
            message names the file.
    """
    p = _checked_path(path)
    try:
        reader = read_zarr if p.is_dir() else read_czi if _is_czi(p) else read_tiff
        data, info, several = reader(p, axes, scene, time)
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise _wrap_errors(p, err) from err
    image = Image(
        data=data,
        axes=info.axes,
        channel_names=list(info.channel_names) if info.channel_names is not None else None,
        pixel_sizes=info.pixel_sizes,
        path=p,
        warnings=info.warnings,
        scene=info.name if several else None,
    )
    for note in image.warnings:
        logger.warning("%s: %s", p, note)
    image = select_channels(image, channels)
    logger.debug("read %s: %s %s %s", p, image.axes, image.data.shape, image.data.dtype)
    return image


def read_array(path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Read a file (as :func:`read_image`, same keyword arguments) as float32 ``(C, *spatial)``."""
    return read_image(path, **kwargs).data.astype(np.float32, copy=False)

