"""What a file holds, from its metadata only: :class:`ImageInfo` with one :class:`SceneInfo` per scene.

Also the rules shared by the readers: choosing a scene and a time point, naming unknown pixel
sizes, and the size limit checked before any pixel array is allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError

__all__ = [
    "MAX_IMAGE_BYTES",
    "ImageInfo",
    "SceneInfo",
    "check_allocation",
    "choose_scene",
    "choose_time",
    "human_bytes",
    "max_image_bytes",
    "pixel_size_notes",
    "scene_names",
]

#: The most bytes one read (one scene, one time point) may allocate: 64 GiB, or the
#: ``LABELFREE_MAX_IMAGE_BYTES`` environment variable. Larger declared sizes are refused up front.
MAX_IMAGE_BYTES = 64 * 2**30

_MAX_LISTED = 20  # scenes named in a message


@dataclass(frozen=True)
class SceneInfo:
    """One scene (CZI scene, OME-TIFF image / TIFF series) of a file, from its metadata.

    Attributes:
        index: position in the file, 0-based (``read_image(scene=index)``).
        name: the file's name for it, or ``"scene<index>"`` when it has none or the name is
            not unique in the file (``read_image(scene=name)``).
        axes: ``"CZYX"`` or ``"CYX"``: the axes :func:`read_image` returns for one time point.
        shape: ``(C, Z, Y, X)`` or ``(C, Y, X)`` of one time point.
        dtype: the pixel type :func:`read_image` returns (native byte order).
        channel_names: one name per channel, or None when the file has none.
        pixel_sizes: µm per pixel, keys among ``"z"``, ``"y"``, ``"x"``; None when unknown.
        n_time: number of time points (``read_image(time=...)`` picks one when > 1).
        warnings: assumptions :func:`read_image` makes reading it (not logged by describe_image).
    """

    index: int
    name: str
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    channel_names: tuple[str, ...] | None
    pixel_sizes: dict[str, float] | None
    n_time: int = 1
    warnings: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of one time point as read."""
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`describe_image` found in a file.

    Attributes:
        path: the file.
        format: ``"OME-TIFF"``, ``"ImageJ-TIFF"``, ``"TIFF"``, ``"CZI"``, ``"OME-Zarr"`` or
            ``"OME-Zarr plate"``.
        scenes: one :class:`SceneInfo` per scene, in file order (at least one).
        plate: an OME-Zarr plate's layout (:class:`~labelfree_jax.imagefiles.zarr_read.PlateLayout`),
            else None.
    """

    path: Path
    format: str
    scenes: tuple[SceneInfo, ...] = field(default=())
    plate: Any = None

    @property
    def n_scenes(self) -> int:
        """Number of scenes."""
        return len(self.scenes)

    def scene(self, key: int | str) -> SceneInfo:
        """The scene with this index or name (see :func:`choose_scene`)."""
        return self.scenes[choose_scene(self.path, [s.name for s in self.scenes], key)]


def scene_names(raw: list[str | None]) -> list[str]:
    """The file's scene names, with ``scene<i>`` for a missing, blank or repeated one."""
    cleaned = [(n or "").strip() for n in raw]
    return [n if n and cleaned.count(n) == 1 else f"scene{i}" for i, n in enumerate(cleaned)]


def _listing(names: list[str]) -> str:
    shown = ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:_MAX_LISTED]))
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def choose_scene(path: Path, names: list[str], key: int | str | None) -> int:
    """The index of the scene ``key`` (index, name, or a string of digits used as an index).

    Raises:
        InputError: several scenes and ``key`` None (the message lists them and says how to
            choose), an index out of range or an unknown name.
    """
    n = len(names)
    if key is None:
        if n == 1:
            return 0
        raise InputError(
            f"{path}: the file has {n} scenes ({_listing(names)}); choose one with scene=<index or name> "
            f"(CLI: --scene NAME_OR_INDEX)"
        )
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, str)):
        raise InputError(f"{path}: scene={key!r} is not an index or a name")
    if isinstance(key, str):
        if key in names:
            return names.index(key)
        if not key.strip().isdigit():
            raise InputError(f"{path}: no scene named {key!r}; scenes: {_listing(names)}")
        key = int(key)
    if not 0 <= int(key) < n:
        raise InputError(f"{path}: scene index {int(key)} out of range; the file has {n} scene(s): {_listing(names)}")
    return int(key)


def choose_time(path: Path, n_time: int, time: int | None, what: str) -> int | None:
    """Check ``time`` against ``n_time`` time points; the index to read (None: there is no T axis).

    Raises:
        InputError: several time points and ``time`` None (the message gives the count and how
            to choose), or ``time`` out of range.
    """
    if time is not None and (isinstance(time, (bool, np.bool_)) or not isinstance(time, (int, np.integer))):
        raise InputError(f"{path}: time={time!r} is not an index")
    if time is None:
        if n_time > 1:
            raise InputError(
                f"{path}: time series with {n_time} time points ({what}); choose one with time=<index> "
                f"(CLI: --time I), index in 0..{n_time - 1}"
            )
        return None
    if not 0 <= int(time) < n_time:
        raise InputError(f"{path}: time index {int(time)} out of range; the file has {n_time} time point(s)")
    return int(time)


def pixel_size_notes(axes: str, pixel_sizes: dict[str, float] | None) -> list[str]:
    """Warnings for unknown pixel sizes of the spatial axes of ``axes`` (``"CZYX"``/``"CYX"``)."""
    spatial = [a.lower() for a in axes[1:]]
    missing = [a for a in spatial if not pixel_sizes or a not in pixel_sizes]
    if not missing:
        return []
    if len(missing) == len(spatial):
        return ["pixel sizes unknown: the file has none"]
    return [f"pixel size unknown along {', '.join(missing)}"]


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def max_image_bytes() -> int:
    """:data:`MAX_IMAGE_BYTES`, or the ``LABELFREE_MAX_IMAGE_BYTES`` environment variable when set."""
    env = os.environ.get("LABELFREE_MAX_IMAGE_BYTES", "").strip()
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise InputError(f"LABELFREE_MAX_IMAGE_BYTES={env!r} is not a number of bytes") from None
    return MAX_IMAGE_BYTES


def check_allocation(path: Path, nbytes: int, what: str) -> None:
    """Refuse, before allocating, a read of more than :func:`max_image_bytes` bytes.

    Raises:
        InputError: naming the file, what would be read and the limit.
    """
    limit = max_image_bytes()
    if nbytes > limit:
        raise InputError(
            f"{path}: reading {what} needs {human_bytes(nbytes)}, over the limit of {human_bytes(limit)} "
            f"(set LABELFREE_MAX_IMAGE_BYTES to raise it)"
        )
