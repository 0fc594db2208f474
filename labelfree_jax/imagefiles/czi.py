"""Zeiss CZI files, read with ``pylibCZIrw`` (Zeiss's libCZI; optional: ``pip install labelfree-jax[czi]``).

Scenes (``S``) are scenes, ``T`` time points; ``C`` and ``Z`` are read plane by plane for one
scene and time point, mosaic tiles stitched by libCZI (pixels no tile covers are 0, as in ZEN).
Sizes come from the subblock directory (not from the XML metadata), so they describe stored
pixels; a read is still held to the size limit before anything is allocated. Colour pixel types
(``Bgr24``/``Bgr48``/``Bgr96Float``) become three channels in R, G, B order. Other dimensions
(``H``, ``I``, ``R``, ``V``, ``B``) of more than one index are refused. Pixel sizes come from
``Scaling/Items/Distance`` (metres per pixel; 0 means unknown).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.axes import MIN_SPATIAL_SIZE, to_um, too_small_message
from labelfree_jax.imagefiles.info import (
    SceneInfo,
    check_allocation,
    choose_scene,
    choose_time,
    pixel_size_notes,
    scene_names,
)

__all__ = ["describe_czi", "read_czi"]

# pylibCZIrw pixel type -> (numpy dtype, samples per pixel)
_PIXEL_TYPES = {
    "Gray8": ("uint8", 1),
    "Gray16": ("uint16", 1),
    "Gray32Float": ("float32", 1),
    "Bgr24": ("uint8", 3),
    "Bgr48": ("uint16", 3),
    "Bgr96Float": ("float32", 3),
}


def _open(path: Path) -> AbstractContextManager[Any]:
    try:
        from pylibCZIrw import czi as pyczi
    except ImportError:
        raise InputError(
            f"{path}: reading CZI files needs the 'pylibCZIrw' package: pip install labelfree-jax[czi]"
        ) from None
    return pyczi.open_czi(str(path))


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [] if x is None else [x]


def _attr(d: Any, name: str) -> Any:
    """An XML attribute as xmltodict (``@Name``) or czifile (``Name``) gives it."""
    return d.get(f"@{name}", d.get(name)) if isinstance(d, dict) else None


def _metadata(meta: Any, notes: list[str]) -> tuple[list[str] | None, dict[str, float | None], dict[int, str]]:
    """Channel names, pixel sizes (µm) and scene names (by S index) from the CZI metadata."""
    root = _get(meta, "ImageDocument", "Metadata")
    ps: dict[str, float | None] = {}
    for d in _as_list(_get(root, "Scaling", "Items", "Distance")):
        axis = str(_attr(d, "Id") or "").upper()
        value = d.get("Value") if isinstance(d, dict) else None
        if axis in ("X", "Y", "Z") and value is not None:
            try:
                unknown = float(value) == 0.0
            except (TypeError, ValueError):
                unknown = False
            if not unknown:
                ps[axis.lower()] = to_um(value, "m", f"CZI scaling {axis}", notes)  # metres per pixel
    dims = _get(root, "Information", "Image", "Dimensions")
    chans = _as_list(_get(dims, "Channels", "Channel"))
    names = [_attr(c, "Name") for c in chans]
    channel_names = [str(n) for n in names] if names and all(n is not None for n in names) else None
    scenes: dict[int, str] = {}
    for s in _as_list(_get(dims, "S", "Scenes", "Scene")):
        index, name = _attr(s, "Index"), _attr(s, "Name")
        if index is not None and name is not None and str(index).strip().isdigit():
            scenes[int(index)] = str(name)
    return channel_names, ps, scenes


def _pixel_type(reader: Any, path: Path) -> tuple[np.dtype, int]:
    types = set(reader.pixel_types.values())
    unknown = sorted(t for t in types if t not in _PIXEL_TYPES)
    if unknown or not types:
        raise InputError(f"{path}: CZI pixel type(s) {unknown or 'none'} not supported; supported: {sorted(_PIXEL_TYPES)}")
    samples = {_PIXEL_TYPES[t][1] for t in types}
    if len(samples) > 1:
        raise InputError(f"{path}: the CZI file mixes grey and colour channels ({sorted(types)}); not supported")
    return np.result_type(*(np.dtype(_PIXEL_TYPES[t][0]) for t in types)), samples.pop()


def _dims(reader: Any, path: Path) -> dict[str, int]:
    box = reader.total_bounding_box
    extra = {k: v[1] for k, v in box.items() if k not in "TZCXY" and v[1] > 1}
    if extra:
        raise InputError(
            f"{path}: CZI dimensions {extra} are not supported; export one index of each (only scenes S, "
            f"time T, channels C and Z are read)"
        )
    return {k: int(box[k][1]) for k in "TZC"}


def _scenes(reader: Any, path: Path) -> list[tuple[SceneInfo, int | None]]:
    """One SceneInfo per scene, with the S index to pass to ``read`` (None: the file has no scenes)."""
    notes: list[str] = []
    try:
        meta = reader.metadata
    except Exception as err:  # noqa: BLE001 - libCZI / xmltodict raise many types on bad metadata: keep the pixels
        notes.append(f"cannot read the CZI metadata ({err}); ignoring it")
        meta = {}
    channel_names, ps, named = _metadata(meta, notes)
    dtype, samples = _pixel_type(reader, path)
    dims = _dims(reader, path)
    rects = dict(sorted(reader.scenes_bounding_rectangle.items()))
    keys: list[int | None] = list(rects) if rects else [None]
    names = scene_names([named.get(k) if k is not None else None for k in keys])
    n_c = dims["C"] * samples
    if samples > 1 and dims["C"] > 1:
        raise InputError(f"{path}: the CZI file has {dims['C']} colour channels; only one colour channel is supported")
    if channel_names is not None and len(channel_names) != n_c:
        if samples == 1:
            notes.append(f"{len(channel_names)} channel names for {n_c} channels; ignoring the names")
        channel_names = None
    out = []
    for i, key in enumerate(keys):
        rect = rects[key] if key is not None else reader.total_bounding_rectangle
        spatial = (dims["Z"], int(rect.h), int(rect.w)) if dims["Z"] > 1 else (int(rect.h), int(rect.w))
        axes = "CZYX" if dims["Z"] > 1 else "CYX"
        shape = (n_c, *spatial)
        if min(shape[-2:]) < MIN_SPATIAL_SIZE:
            raise InputError(too_small_message(path, shape, axes, subject=f"scene {names[i]!r}"))
        pixel_sizes = {k: float(v) for k in axes[1:].lower() if (v := ps.get(k)) is not None} or None
        info = SceneInfo(
            index=i,
            name=names[i],
            axes=axes,
            shape=shape,
            dtype=dtype,
            channel_names=tuple(channel_names) if channel_names else None,
            pixel_sizes=pixel_sizes,
            n_time=dims["T"],
            warnings=tuple(notes + pixel_size_notes(axes, pixel_sizes)),
        )
        out.append((info, key))
    return out


def _no_axes(path: Path, axes: str | None) -> None:
    if axes is not None:
        raise InputError(f"{path}: axes={axes!r} is for TIFF files without axis metadata; a CZI file names its axes")


def describe_czi(path: Path, axes: str | None = None) -> list[SceneInfo]:
    """The scenes of a CZI file, from its metadata and subblock directory (no pixels read).

    Raises:
        InputError: ``axes`` given, pylibCZIrw missing, or see the module docstring.
    """
    _no_axes(path, axes)
    with _open(path) as reader:
        return [info for info, _ in _scenes(reader, path)]


def _read_planes(reader: Any, info: SceneInfo, key: int | None, t: int) -> np.ndarray:
    samples = _samples(reader)
    n_z = info.shape[1] if info.axes == "CZYX" else 1
    out = np.empty((info.shape[0], n_z, *info.shape[-2:]), dtype=info.dtype)
    for c in range(info.shape[0] // samples):
        for z in range(n_z):
            plane = reader.read(plane={"C": c, "Z": z, "T": t}, scene=key)  # (Y, X, samples)
            if samples > 1:
                plane = plane[..., ::-1]  # libCZI gives BGR: R, G, B channels
            out[c * samples:(c + 1) * samples, z] = np.moveaxis(plane, -1, 0)
    return out.reshape(info.shape)


def _samples(reader: Any) -> int:
    return _PIXEL_TYPES[next(iter(reader.pixel_types.values()))][1]


def read_czi(path: Path, axes: str | None, scene: int | str | None, time: int | None) -> tuple[
        np.ndarray, SceneInfo, bool]:
    """One scene and time point of a CZI file: ``(data, scene info, several scenes?)``.

    Raises:
        InputError: ``axes`` given (a CZI file names its dimensions), pylibCZIrw missing, scene
            or time not chosen when there are several, a read over the size limit, or see the
            module docstring.
    """
    _no_axes(path, axes)
    with _open(path) as reader:
        scenes = _scenes(reader, path)
        i = choose_scene(path, [s.name for s, _ in scenes], scene)
        info, key = scenes[i]
        t = choose_time(path, info.n_time, time, f"scene {info.name!r}, shape {info.shape}")
        what = f"scene {info.name!r}" if len(scenes) > 1 else "the image"
        check_allocation(path, info.nbytes, f"{what} (shape {info.shape}, {info.dtype})")
        data = _read_planes(reader, info, key, 0 if t is None else t)
    return data, info, len(scenes) > 1
