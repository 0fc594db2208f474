"""Stored images read region by region: a channel-first view of an on-disk array that reads only what is asked.

:class:`LazyImage` wraps an array-like that reads on indexing (a zarr array: OME-Zarr level 0, or
the zarr store tifffile makes of a TIFF, ``tifffile.imread(..., aszarr=True)``) whose stored
axes are letters among ``T C Z Y X`` (e.g. ``"TCZYX"``), and presents it as ``(C, Z, Y, X)`` or
``(C, Y, X)``: a fixed time point, a missing C (or Z) axis of length 1 added, a Z axis of length 1
dropped for ``CYX``. ``view[c0:c1, z0:z1, ...]`` reads that region (and only the chunks it
touches) as a numpy array in native byte order. Nothing is read when the view is made.

:func:`open_lazy` opens one scene and time point of an OME-Zarr (or of a TIFF that tifffile can
serve chunk by chunk); None when the file cannot be read lazily (the caller then reads it whole).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError

__all__ = ["LazyImage", "open_lazy"]

log = logging.getLogger(__name__)


class LazyImage:
    """A ``(C, Z, Y, X)`` / ``(C, Y, X)`` view of a stored array, read region by region.

    Args:
        array: the stored array (``shape``, ``dtype``, numpy-style basic slicing that reads).
        letters: its stored axes, e.g. ``"TCZYX"`` or ``"ZYX"`` (each of T, C, Z, Y, X at most once).
        layout: ``"CZYX"`` or ``"CYX"``.
        fixed: stored axes not in ``layout`` and their index (e.g. ``{"T": 3}``; a Z axis of length
            1 for ``CYX`` gets 0 when not given).
        path: the file, for error messages.

    Attributes:
        shape: the view's shape in ``layout``; ``dtype``: the stored dtype (native byte order).

    Raises:
        InputError: the letters and ``layout`` do not fit (an axis missing, a dropped axis longer
            than 1 without a fixed index).
    """

    def __init__(self, array: Any, letters: str, layout: str, *, fixed: dict[str, int] | None = None,
                 path: Path | None = None):
        self.array, self.letters, self.layout, self.path = array, letters.upper(), layout, path
        self.fixed = {k.upper(): int(v) for k, v in (fixed or {}).items()}
        sizes = dict(zip(self.letters, (int(s) for s in array.shape)))
        for a in self.letters:
            if a not in layout and a not in self.fixed:
                if sizes[a] != 1:
                    raise InputError(f"{path}: stored axis {a} (length {sizes[a]}) has no index chosen for a "
                                     f"{layout} view")
                self.fixed[a] = 0
        self.shape = tuple(sizes.get(a, 1) for a in layout)
        self.dtype = np.dtype(array.dtype).newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def chunk_shape(self) -> tuple[int, ...]:
        """The stored chunk shape in the view's layout (the whole axis where the store has no chunks)."""
        chunks = getattr(self.array, "chunks", None) or self.array.shape
        per = dict(zip(self.letters, (int(c) for c in chunks)))
        return tuple(min(per.get(a, 1), s) for a, s in zip(self.layout, self.shape))

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """The region ``key`` (one slice of step 1 per view axis) as a numpy array in ``layout`` order."""
        if len(key) != len(self.layout):
            raise IndexError(f"{len(key)} slices for a {self.layout} view")
        want = dict(zip(self.layout, key))
        index, kept = [], []
        for a in self.letters:
            if a in self.fixed:
                index.append(self.fixed[a])
            else:
                index.append(want[a])
                kept.append(a)
        try:
            block = np.asarray(self.array[tuple(index)])
        except Exception as err:  # noqa: BLE001 - a chunk that vanished or does not decode: one line
            raise InputError(f"{self.path}: cannot read the region {_region(key)}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None
        for a in self.layout:
            if a not in kept:
                block, kept = block[np.newaxis], [a, *kept]
        block = np.transpose(block, [kept.index(a) for a in self.layout])
        if block.dtype.byteorder not in ("=", "|"):
            block = block.astype(block.dtype.newbyteorder("="))
        return block


def _region(key: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in key) + "]"


def _tiff_lazy(path: Path, scene: int | None, time: int | None, info: Any) -> LazyImage | None:
    """A TIFF series served by tifffile's zarr store, when its axes are plain T/C/Z/Y/X (else None)."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[scene or 0]
            letters = "".join(a for a, s in zip(series.axes, series.shape) if s > 1 or a in "YX")
            axes = series.axes
        if set(letters) - set("TCZYX") or len(set(letters)) != len(letters):
            log.debug("%s: TIFF axes %s cannot be read lazily", path, axes)
            return None
        store = tifffile.imread(path, aszarr=True, series=scene or 0, squeeze=True)
        array = zarr.open_array(store, mode="r")
    except Exception as err:  # noqa: BLE001 - any failure: read the file whole instead
        log.debug("%s: no lazy TIFF access: %s: %s", path, type(err).__name__, err)
        return None
    if array.ndim != len(letters):
        return None
    view = LazyImage(array, letters, info.axes, fixed={"T": time or 0} if "T" in letters else None, path=path)
    if view.shape != tuple(info.shape):  # the reader maps the axes another way: do not guess
        log.debug("%s: lazy TIFF view %s differs from the reader's %s", path, view.shape, info.shape)
        return None
    return view


def open_lazy(path: str | Path, *, scene: int | str | None = None, time: int | None = None,
              axes: str | None = None) -> tuple[LazyImage, Any] | None:
    """One scene and time point of ``path`` as a :class:`LazyImage`, with its ``SceneInfo``; None when not lazily readable.

    OME-Zarr: always (level 0 through zarr; chunks missing from level 0 are refused as
    :func:`~labelfree_jax.imagefiles.zarr_read.read_zarr` refuses them). TIFF: when tifffile
    serves the series as a zarr store and its axes are plain ``T C Z Y X`` matching what
    :func:`~labelfree_jax.imagefiles.read.read_image` returns, and no ``axes`` override is given.
    CZI and other cases: None.

    Raises:
        InputError: as :func:`~labelfree_jax.imagefiles.read.describe_image` and ``read_image``
            for this scene and time point (missing chunks, a scene or time the file lacks).
    """
    from labelfree_jax.imagefiles.info import choose_scene, choose_time
    from labelfree_jax.imagefiles.read import describe_image
    from labelfree_jax.imagefiles.zarr_read import is_zarr, open_zarr_lazy

    p = Path(path)
    if is_zarr(p):
        return open_zarr_lazy(p, axes, scene, time)
    if axes is not None or p.suffix.lower() not in (".tif", ".tiff"):
        return None
    info = describe_image(p)
    names = [s.name for s in info.scenes]
    i = choose_scene(p, names, scene) if len(names) > 1 or scene is not None else 0
    scene_info = info.scenes[i]
    t = choose_time(p, scene_info.n_time, time, f"shape {scene_info.shape}")
    view = _tiff_lazy(p, i if len(names) > 1 else None, t, scene_info)
    return (view, scene_info) if view is not None else None
