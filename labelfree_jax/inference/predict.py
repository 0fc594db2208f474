"""Prediction: signal transforms -> tiled network -> inverse geometric transforms; batches of files.

:func:`predict_array` predicts one image of any size with a :class:`~labelfree_jax.models.package.Model`
(or any object with ``config``, ``ndim`` and ``forward_fn()``):

1. the input ``(C, Z, Y, X)`` / ``(Z, Y, X)`` (3D model) or ``(C, Y, X)`` / ``(Y, X)`` (2D model)
   is checked (dimensions, channel count, NaN/Inf) and converted to float32;
2. the model's ``signal_transforms`` (normalisation, resizing, padding ...) map it onto the
   network's *working grid*;
3. the network runs tile by tile (:mod:`labelfree_jax.inference.tiling`) with tile starts aligned to
   ``2**depth`` voxels, so the interior of every tile equals the whole-volume output, and the
   tiles are blended with Gaussian-tapered weights;
4. the geometric transforms are inverted (intensity transforms are not: the prediction is
   in the units of the training targets), so the result lies on the input grid:
   ``(C_out, *input_spatial)`` float32.

Tile size. Unless given, the tile is the whole (padded) working volume when the network's
activation memory for it fits the memory budget, otherwise the largest tile found by halving
the longest side until it fits (so short Z stacks stay whole). The memory estimate
(:func:`estimate_memory_bytes`) is ``4 bytes * B * V * (k C0 + 2 (C_in + C_out)) * 1.25`` for a
batch of ``B`` tiles of ``V`` voxels and ``C0`` first-level channels, with ``k`` from XLA's own
buffer assignment for the fnet U-Net (4 with native convolutions, 10 for 3D on CPU). The
default budget is 40 % of an accelerator's memory, or on CPU a quarter of the RAM capped at
4 GiB.

Overlap. The fnet (depth 4) has a receptive field of about 200 voxels, but its output depends
mostly on the nearest few tens: for a random depth-4, 32-channel fnet (measured by
``scripts/benchmark_predict_memory.py``, see ``docs/benchmark_predict_memory.md``) the error
of a tile's output vs the whole-volume output, in output standard deviations, is ~4 at the
tile border, 1e-2 (fnet init) / 0.4 (variance-preserving He init) 8 voxels inside, and
7e-4 / 1.4e-2 32 voxels inside. The Gaussian blending weights are ~4e-6 at a tile border, so
the blended error is about the error at half the overlap: the default overlap per axis is
``min(64, tile // 2, tile - 2**depth)`` voxels, e.g. (16, 64, 64) for (32, 256, 256) tiles,
measured max error 7e-4 (fnet init) / 1.3e-2 (He init) of the output's standard deviation
with overlap 64. (The 2017 fnet used 16.) An axis covered by a single tile gets no overlap.

Memory during prediction: the input and its padded working copy, two float32 accumulators of
the output size and at most two batches of tiles; it does not grow with the number of tiles.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as globlib
import io as _stdio
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import read_image, write_ome_tiff
from labelfree_jax.imagefiles.manifest import read_manifest
from labelfree_jax.inference.tiling import BLEND_KINDS, predict_tiled, resolve_overlap
from labelfree_jax.transforms import Pipeline, validate_image_array

__all__ = [
    "predict_array",
    "predict_files",
    "merge_summaries",
    "PredictionRecord",
    "SUMMARY_COLUMNS",
    "estimate_memory_bytes",
    "default_memory_budget",
    "choose_tile_shape",
    "default_overlap",
    "expand_inputs",
    "shard_items",
    "resolve_shard",
    "summary_path",
    "prediction_path",
    "DEFAULT_MAX_OVERLAP",
]

log = logging.getLogger(__name__)

#: Largest default overlap per axis (voxels): tile seams then sit >= 32 voxels inside both tiles.
DEFAULT_MAX_OVERLAP = 64

#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = ("path_signal", "path_target", "path_prediction", "status", "error", "pearson_r", "seconds")

_IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".czi")
_MEMORY_MARGIN = 1.25


# --------------------------------------------------------------------------------------------
# tile size and memory
# --------------------------------------------------------------------------------------------
def _network(model) -> Any:
    net = getattr(getattr(model, "config", None), "network", None)
    if net is None:
        raise TypeError(f"{model!r} has no config.network: not a labelfree_jax Model")
    return net


def _first_channels(net) -> int:
    fc = getattr(net, "first_channels", None)
    if fc is not None:
        return int(fc)
    base = getattr(net, "base_channels", None)
    return int(base) if base is not None else int(net.in_channels * net.mult_chan)


def _size_multiple(net) -> int:
    return int(2 ** int(net.depth))


#: Activation floats per voxel and first-level channel (see :func:`estimate_memory_bytes`).
_ACTIVATION_FACTOR_NATIVE = 4
_ACTIVATION_FACTOR_CPU_3D = 10


def estimate_memory_bytes(network, tile_shape: Sequence[int], batch_size: int = 1, backend: str | None = None) -> int:
    """Estimated memory (bytes) of one forward pass of ``batch_size`` tiles, weights excluded.

    ``network``: a :class:`~labelfree_jax.models.config.NetworkConfig`; ``tile_shape``: spatial tile
    shape (voxels); ``backend``: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: JAX's default).
    Formula: ``4 * B * V * (k * C0 + 2 (C_in + C_out)) * 1.25`` with ``V = prod(tile_shape)``,
    ``C0`` the first level's channel count, and ``k`` the activation floats per voxel and
    channel in XLA's buffer assignment (``compiled.memory_analysis().temp_size_in_bytes``),
    measured for the fnet U-Net, depths 2-4: ``k = 4`` for native convolutions (2D, GPU/TPU:
    the deeper levels reuse the first level's buffers), ``k = 10`` for 3D on CPU, where
    :mod:`labelfree_jax.models.ops` folds depth into the batch and holds depth-shifted copies
    (measured 8.1-10.7). ``2 (C_in + C_out)``: input and output, host and device copies; 25 %
    margin for backend workspace (cuDNN) and fragmentation.
    """
    v = math.prod(int(t) for t in tile_shape)
    backend = backend or jax.default_backend()
    k = _ACTIVATION_FACTOR_CPU_3D if backend == "cpu" and len(tuple(tile_shape)) == 3 else _ACTIVATION_FACTOR_NATIVE
    per_voxel = k * _first_channels(network) + 2 * (int(network.in_channels) + int(network.out_channels))
    return int(4 * batch_size * v * per_voxel * _MEMORY_MARGIN)


def default_memory_budget() -> int:
    """Bytes the default tile may use: 40 % of the first local accelerator's memory, else
    (CPU) a quarter of the physical RAM, at most 4 GiB."""
    try:
        dev = jax.local_devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            limit = stats.get("bytes_limit")
            if limit:
                return int(0.4 * limit)
    except Exception as err:  # pragma: no cover - depends on the backend
        log.debug("no device memory statistics: %s", err)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    return int(min(ram // 4, 4 * 2**30))


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _halve_largest(tile: Sequence[int], m: int) -> tuple[int, ...] | None:
    """``tile`` with its longest side halved (rounded up to a multiple of ``m``); None if all are ``m``."""
    tile = list(tile)
    order = sorted(range(len(tile)), key=lambda i: -tile[i])
    for i in order:
        if tile[i] > m:
            tile[i] = max(m, _round_up(tile[i] // 2, m))
            return tuple(tile)
    return None


def choose_tile_shape(
    network,
    spatial_shape: Sequence[int],
    *,
    tile_shape: Sequence[int] | None = None,
    max_memory_bytes: int | None = None,
    batch_size: int = 1,
) -> tuple[int, ...]:
    """Tile shape (voxels) for a working volume of ``spatial_shape`` (``(Z, Y, X)`` or ``(Y, X)``).

    Every side is a multiple of ``m = 2**depth`` and at most the volume side rounded up to
    ``m``. A given ``tile_shape`` is rounded down to multiples of ``m`` (at least ``m``);
    otherwise the start is the whole volume. Then, while :func:`estimate_memory_bytes` exceeds
    the budget (``max_memory_bytes``, default :func:`default_memory_budget`; a given
    ``tile_shape`` is only shrunk when ``max_memory_bytes`` is given), the longest side is halved.
    """
    m = _size_multiple(network)
    full = tuple(_round_up(s, m) for s in spatial_shape)
    if tile_shape is not None:
        tile_shape = tuple(int(t) for t in tile_shape)
        if len(tile_shape) != len(full):
            raise InputError(
                f"tile shape {tile_shape} has {len(tile_shape)} sides; the image has {len(full)} spatial axes"
            )
        if any(t < 1 for t in tile_shape):
            raise InputError(f"tile sides must be positive, got {tile_shape}")
        tile = tuple(min(max(m, t // m * m), f) for t, f in zip(tile_shape, full))
        if tile != tuple(min(t, f) for t, f in zip(tile_shape, full)):
            log.info("tile shape %s rounded to %s (multiples of %d)", tile_shape, tile, m)
        if max_memory_bytes is None:
            return tile
        budget = int(max_memory_bytes)
    else:
        tile = full
        budget = int(max_memory_bytes) if max_memory_bytes is not None else default_memory_budget()
    while estimate_memory_bytes(network, tile, batch_size) > budget:
        smaller = _halve_largest(tile, m)
        if smaller is None:
            log.warning(
                "even a %s tile needs about %.2f GB (> budget %.2f GB)",
                tile,
                estimate_memory_bytes(network, tile, batch_size) / 1e9,
                budget / 1e9,
            )
            break
        tile = smaller
    return tile


def default_overlap(tile_shape: Sequence[int], spatial_shape: Sequence[int], size_multiple: int) -> tuple[int, ...]:
    """Default overlap per axis (voxels): ``min(64, tile // 2, tile - size_multiple)``.

    0 where one tile covers the axis. (``tile - size_multiple`` keeps at least one aligned
    step between tile starts.)
    """
    out = []
    for t, s in zip(tile_shape, spatial_shape):
        if t >= _round_up(s, size_multiple):
            out.append(0)
        else:
            out.append(min(DEFAULT_MAX_OVERLAP, t // 2, t - size_multiple))
    return tuple(out)


def _resolve_overlap(overlap, tile: tuple[int, ...], spatial: tuple[int, ...], m: int) -> tuple[int, ...]:
    if overlap is None:
        return default_overlap(tile, spatial, m)
    try:
        ov = resolve_overlap(tile, overlap)
    except ValueError as err:
        raise InputError(f"bad overlap {overlap!r}: {err}") from None
    out = []
    for o, t, s in zip(ov, tile, spatial):
        if t >= _round_up(s, m):
            out.append(0)  # one tile covers this axis: overlap is meaningless
        elif o > t - m:
            log.warning("overlap %d >= tile side %d - %d; using %d", o, t, m, t - m)
            out.append(t - m)
        else:
            out.append(o)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# running the network
# --------------------------------------------------------------------------------------------
def _is_out_of_memory(err: BaseException) -> bool:
    classes = tuple(
        c for c in (getattr(jax.errors, "JaxRuntimeError", None), getattr(jax.errors, "XlaRuntimeError", None)) if c
    )
    return isinstance(err, classes) and "RESOURCE_EXHAUSTED" in str(err)


def _device_fn(fn: Callable, batch_size: int) -> tuple[Callable, int]:
    """Shard the batch axis over the local devices when there are several.

    Returns the wrapped function and ``batch_size`` rounded up to a multiple of the device count.
    """
    devices = jax.local_devices()
    if len(devices) <= 1:
        return fn, batch_size
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    batch_size = _round_up(batch_size, n)
    log.info("sharding tile batches of %d over %d devices", batch_size, n)

    def sharded(batch):
        return fn(jax.device_put(batch, sharding))

    return sharded, batch_size


def _tta_flips(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    if not tta:
        return [()]
    return [tuple(a for a, f in zip(range(ndim), flags) if f) for flags in itertools.product((False, True), repeat=ndim)]


def _check_input(model, x) -> np.ndarray:
    net = _network(model)
    nd = int(getattr(model, "ndim", net.ndim))
    arr = np.asarray(x)
    layout = "(C, Z, Y, X) or (Z, Y, X)" if nd == 3 else "(C, Y, X) or (Y, X)"
    if arr.ndim == nd:
        arr = arr[np.newaxis]
    elif arr.ndim != nd + 1:
        raise InputError(f"a {nd}D model takes a {layout} array; got shape {arr.shape} ({arr.ndim} dimensions)")
    if arr.shape[0] != net.in_channels:
        raise InputError(
            f"the model takes {net.in_channels} input channel(s); the array of shape {arr.shape} has {arr.shape[0]} "
            f"(channel axis first: {layout})"
        )
    return validate_image_array(arr, what="input image")


def predict_array(
    model,
    x: np.ndarray,
    *,
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    return_working_grid: bool = False,
    pixel_sizes: dict[str, float] | None = None,
    max_memory_bytes: int | None = None,
    progress: bool = True,
):
    """Predict the target for one image of any size.

    Args:
        model: a :class:`~labelfree_jax.models.package.Model` (``config``, ``ndim``, ``forward_fn()``).
        x: ``(C, Z, Y, X)`` or ``(Z, Y, X)`` for a 3D model, ``(C, Y, X)`` or ``(Y, X)`` for a
            2D model (without C, one channel is assumed); any real dtype; ``C`` must equal the
            network's input channels.
        tile_shape: spatial tile (voxels, on the working grid); default: the model config's
            ``prediction.tile_shape``, else chosen from the memory budget (module docstring).
            Rounded down to multiples of ``2**depth`` and clipped to the padded volume.
        overlap: per axis, voxels (whole number) or fraction of the tile (float in [0, 1));
            default: the config's ``prediction.overlap``, else ``min(64, tile // 2, tile - 2**depth)``.
        batch_size: tiles per network call (rounded up to a multiple of the local device count).
        blend: ``"gaussian"``, ``"triangular"`` or ``"uniform"`` (see
            :func:`labelfree_jax.inference.tiling.blend_weights`); default: the config's
            ``prediction.blend``, else ``"gaussian"``.
        tta: test-time augmentation: average the predictions for all ``2**ndim`` combinations
            of flipping the spatial axes (``2**ndim`` times the work).
        return_working_grid: also return the prediction on the working grid.
        pixel_sizes: µm per pixel of ``x`` (``{"z", "y", "x"}``), needed by a ``resize`` to a
            target pixel size.
        max_memory_bytes: memory budget for choosing (or shrinking) the tile.
        progress: tqdm bars.

    Returns:
        ``(C_out, *spatial of x)`` float32; with ``return_working_grid`` the tuple
        ``(prediction, prediction_on_working_grid)``.

    Raises:
        InputError: wrong dimensions or channel count, NaN/Inf, empty axes, bad tile/overlap.

    On an accelerator out-of-memory error the tile's longest side is halved and the
    prediction retried (down to ``2**depth`` voxels), with a warning.
    """
    net = _network(model)
    nd = int(getattr(model, "ndim", net.ndim))
    defaults = getattr(model.config, "prediction", None)
    if blend is None:
        blend = getattr(defaults, "blend", None) or "gaussian"
    if blend not in BLEND_KINDS:
        raise InputError(f"blend must be one of {BLEND_KINDS}, got {blend!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    arr = _check_input(model, x)
    input_spatial = tuple(arr.shape[1:])
    cfg = model.config
    pipeline = Pipeline(steps=tuple(getattr(cfg, "signal_transforms", ()) or ()))
    work, state = pipeline.apply(arr, pixel_sizes=pixel_sizes)
    spatial = tuple(work.shape[1:])
    m = _size_multiple(net)
    if tile_shape is None:
        tile_shape = getattr(defaults, "tile_shape", None)
    if overlap is None:
        overlap = getattr(defaults, "overlap", None)
    fn, batch_size = _device_fn(model.forward_fn(), int(batch_size))
    tile = choose_tile_shape(
        net, spatial, tile_shape=tile_shape, max_memory_bytes=max_memory_bytes, batch_size=batch_size
    )
    flips = _tta_flips(nd, tta)
    while True:
        ov = _resolve_overlap(overlap, tile, spatial, m)
        log.info(
            "predicting %s (working grid %s) with tiles %s, overlap %s, batch %d%s",
            input_spatial, spatial, tile, ov, batch_size, f", TTA x{len(flips)}" if tta else "",
        )
        try:
            acc = None
            for axes in flips:
                src = np.ascontiguousarray(np.flip(work, tuple(a + 1 for a in axes))) if axes else work
                y = predict_tiled(
                    fn, src, tile_shape=tile, overlap=ov, batch_size=batch_size, blend=blend,
                    align=m, progress=progress,
                )
                if axes:
                    y = np.flip(y, tuple(a + 1 for a in axes))
                acc = y if acc is None else acc + y
            break
        except Exception as err:
            if not _is_out_of_memory(err):
                raise
            smaller = _halve_largest(tile, m)
            if smaller is None:
                raise
            log.warning("out of accelerator memory with tile %s; retrying with %s", tile, smaller)
            tile = smaller
    assert acc is not None
    y_work = (acc / len(flips)).astype(np.float32, copy=False) if len(flips) > 1 else acc
    y = pipeline.invert(y_work, state, geometric_only=True)
    if tuple(y.shape[1:]) != input_spatial:  # pragma: no cover - guarded by the transforms' own tests
        raise RuntimeError(f"inverse transforms gave spatial shape {y.shape[1:]}, expected {input_spatial}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    return (y, y_work) if return_working_grid else y


# --------------------------------------------------------------------------------------------
# batches of files
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PredictionRecord:
    """Outcome of predicting one file (one row of ``summary.csv``).

    ``status`` is ``"ok"`` or ``"error"`` (then ``error`` holds the message); ``pearson_r``
    (prediction vs target over all voxels) is None without a target; ``seconds`` is the wall
    time for this file (read, predict, write, evaluate).
    """

    path_signal: str
    path_target: str | None = None
    path_prediction: str | None = None
    status: str = "ok"
    error: str = ""
    pearson_r: float | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self) -> dict[str, str]:
        return {
            "path_signal": self.path_signal,
            "path_target": self.path_target or "",
            "path_prediction": self.path_prediction or "",
            "status": self.status,
            "error": self.error,
            "pearson_r": "" if self.pearson_r is None else repr(float(self.pearson_r)),
            "seconds": f"{self.seconds:.3f}",
        }


def _has_magic(p: str) -> bool:
    return any(ch in p for ch in "*?[")


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)


def _expand_one(item: str | os.PathLike) -> list[Path]:
    text = os.fspath(item)
    if _has_magic(text):
        matches = sorted(globlib.glob(text, recursive=True))
        if not matches:
            raise InputError(f"{text}: no files match this pattern")
        return [Path(p) for p in matches if Path(p).is_file()]
    p = Path(text)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if _is_image_file(q))
        if not files:
            raise InputError(f"{p}: folder holds no image files ({', '.join(_IMAGE_SUFFIXES)})")
        return files
    return [p]


def expand_inputs(inputs, target=None) -> list[tuple[Path, Path | None]]:
    """The ``(signal, target or None)`` pairs named by ``inputs`` (and ``target``), in order.

    ``inputs``: a path or a list of them; each may be a file, a folder (its ``.tif``/``.tiff``
    /``.czi`` files), a glob pattern (sorted matches) or a CSV manifest (``.csv``) with a
    ``path_signal`` column and an optional ``path_target`` column (relative paths are taken
    beside the CSV when they exist there, else relative to the working directory).
    ``target``: paths/patterns expanded the same way, paired in order with the signals
    (must give as many files); not allowed together with manifest targets.
    Duplicated signal files are kept once.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("no input images given")
    pairs: list[tuple[Path, Path | None]] = []
    for item in items:
        text = os.fspath(item)
        if text.lower().endswith(".csv") and not _has_magic(text):
            pairs.extend((row.signal, row.target)
                         for row in read_manifest(text, require_target=False, check_files=False))
        else:
            pairs.extend((p, None) for p in _expand_one(text))
    if target is not None:
        titems = [target] if isinstance(target, (str, os.PathLike)) else list(target)
        targets = [p for t in titems for p in _expand_one(t)]
        if any(t is not None for _, t in pairs):
            raise InputError("give targets either in the manifest (path_target) or as target=, not both")
        if len(targets) != len(pairs):
            raise InputError(f"{len(pairs)} input image(s) but {len(targets)} target image(s)")
        pairs = [(s, t) for (s, _), t in zip(pairs, targets)]
    seen: set[str] = set()
    unique = []
    for s, t in pairs:
        key = os.path.abspath(s)
        if key in seen:
            log.warning("%s is listed more than once; predicting it once", s)
            continue
        seen.add(key)
        unique.append((s, t))
    return unique


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """``shard`` checked, or ``(jax.process_index(), jax.process_count())`` when None."""
    if shard is None:
        return int(jax.process_index()), int(jax.process_count())
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard must be (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard index must be in [0, {n}) with count >= 1, got {i}/{n}")
    return i, n


def shard_items(items: Sequence, shard: tuple[int, int]) -> list:
    """Shard ``i`` of ``n`` of ``items``: ``items[i::n]`` (the shards are disjoint and cover all)."""
    i, n = resolve_shard(shard)
    return list(items[i::n])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def prediction_path(out_dir: str | os.PathLike, signal_path: str | os.PathLike) -> Path:
    """``<out_dir>/<stem>_prediction.ome.tif`` for an input file."""
    return Path(out_dir) / f"{_stem(Path(signal_path))}_prediction.ome.tif"


def _output_paths(out_dir: Path, signals: Sequence[Path]) -> list[Path]:
    """Prediction paths, made unique (``_2``, ``_3`` ...) when two inputs share a stem."""
    counts: dict[str, int] = {}
    out = []
    for s in signals:
        stem = _stem(s)
        counts[stem] = counts.get(stem, 0) + 1
        suffix = "" if counts[stem] == 1 else f"_{counts[stem]}"
        out.append(out_dir / f"{stem}{suffix}_prediction.ome.tif")
    return out


def summary_path(out_dir: str | os.PathLike, shard: tuple[int, int] | None = None) -> Path:
    """``summary.csv``, or ``summary-<i>-of-<n>.csv`` for shard ``i`` of ``n > 1``."""
    i, n = resolve_shard(shard)
    return Path(out_dir) / ("summary.csv" if n == 1 else f"summary-{i}-of-{n}.csv")


def _write_summary(path: Path, records: Iterable[PredictionRecord]) -> None:
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(r.row())
    atomic_write_text(path, buf.getvalue())


def _to_model_layout(data: np.ndarray, axes: str, nd: int, path: Path) -> tuple[np.ndarray, str]:
    """Image data as the model's layout; returns the array and the axes to write the output with."""
    if nd == 3 and axes == "CYX":
        return data[:, np.newaxis], "CYX"  # one z-plane: predict as a 1-slice stack
    if nd == 2 and axes == "CZYX":
        if data.shape[1] != 1:
            raise InputError(f"{path}: a 2D model needs a 2D image; this one has {data.shape[1]} z-slices")
        return data[:, 0], "CZYX"
    return data, axes


def _from_model_layout(pred: np.ndarray, out_axes: str, nd: int) -> np.ndarray:
    if nd == 3 and out_axes == "CYX":
        return pred[:, 0]
    if nd == 2 and out_axes == "CZYX":
        return pred[:, np.newaxis]
    return pred


def _pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays over all voxels (float64); nan if one is constant.

    (A local helper: :mod:`labelfree_jax.evaluation.metrics` sits below this module in the layering.)
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("cannot correlate arrays with NaN/Inf values")
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    if denom == 0.0:
        log.warning("Pearson r undefined: prediction or target is constant")
        return float("nan")
    return float(np.clip((x @ y) / denom, -1.0, 1.0))


def predict_files(
    model,
    inputs,
    out_dir: str | os.PathLike,
    *,
    target=None,
    shard: tuple[int, int] | None = None,
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    axes: str | None = None,
    max_memory_bytes: int | None = None,
    progress: bool = True,
) -> list[PredictionRecord]:
    """Predict a batch of image files; one process's share when sharded.

    Args:
        model: the model (see :func:`predict_array`).
        inputs: files, folders, glob patterns or CSV manifests (see :func:`expand_inputs`).
        out_dir: where ``<stem>_prediction.ome.tif`` files (float32, the input's axes and pixel
            sizes) and the summary go; created if missing.
        target: target image(s) paired with the inputs, for Pearson r (or ``path_target`` in a
            manifest).
        shard: ``(i, n)``: predict only ``items[i::n]``; None: ``(jax.process_index(),
            jax.process_count())``.
        tile_shape, overlap, batch_size, blend, tta, max_memory_bytes: as :func:`predict_array`.
        axes: axes of the stored arrays, for files whose metadata is missing or wrong (see
            :func:`labelfree_jax.imagefiles.read.read_image`).
        progress: tqdm bars.

    Each file is read with the model's ``signal_channels`` (targets with ``target_channels``).
    A file that fails (unreadable, bad shape, ...) is logged and recorded with its error; the
    others go on. The summary (columns :data:`SUMMARY_COLUMNS`) is rewritten atomically after
    every file as ``summary.csv``, or ``summary-<i>-of-<n>.csv`` when sharded (merge with
    :func:`merge_summaries`).

    Returns:
        One :class:`PredictionRecord` per file of this shard, in order.
    """
    i, n = resolve_shard(shard)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = expand_inputs(inputs, target)
    outputs = _output_paths(out_dir, [s for s, _ in pairs])
    mine = shard_items(list(zip(pairs, outputs)), (i, n))
    summary = summary_path(out_dir, (i, n))
    cfg = model.config
    nd = int(getattr(model, "ndim", cfg.network.ndim))
    sig_channels = getattr(cfg, "signal_channels", None)
    tgt_channels = getattr(cfg, "target_channels", None)
    names = None
    if tgt_channels and all(isinstance(c, str) for c in tgt_channels) and len(tgt_channels) == cfg.network.out_channels:
        names = [f"{c} (predicted)" for c in tgt_channels]
    log.info("shard %d/%d: %d of %d image(s) -> %s", i, n, len(mine), len(pairs), out_dir)
    records: list[PredictionRecord] = []
    for (sig, tgt), out_path in tqdm(mine, desc="images", unit="image", disable=not progress):
        rec = PredictionRecord(path_signal=str(sig), path_target=str(tgt) if tgt is not None else None)
        t0 = time.perf_counter()
        try:
            img = read_image(sig, channels=list(sig_channels) if sig_channels else None, axes=axes)
            data, out_axes = _to_model_layout(img.data, img.axes, nd, Path(sig))
            pred = predict_array(
                model, data, tile_shape=tile_shape, overlap=overlap, batch_size=batch_size, blend=blend,
                tta=tta, pixel_sizes=img.pixel_sizes, max_memory_bytes=max_memory_bytes, progress=progress,
            )
            pred = _from_model_layout(pred, out_axes, nd)
            sizes = {k: v for k, v in (img.pixel_sizes or {}).items() if k.upper() in out_axes[1:]} or None
            write_ome_tiff(out_path, pred, axes=out_axes, channel_names=names, pixel_sizes=sizes)
            rec.path_prediction = str(out_path)
            if tgt is not None:
                timg = read_image(tgt, channels=list(tgt_channels) if tgt_channels else None, axes=axes)
                if timg.data.shape != pred.shape:
                    raise InputError(
                        f"{tgt}: target shape {timg.data.shape} ({timg.axes}) differs from the prediction's "
                        f"{pred.shape} ({out_axes})"
                    )
                rec.pearson_r = _pearson_r(pred, timg.data)
        except Exception as err:  # one bad file must not stop the batch
            rec.status = "error"
            rec.error = f"{type(err).__name__}: {err}" if not isinstance(err, InputError) else str(err)
            log.error("%s: prediction failed: %s", sig, rec.error)
        rec.seconds = time.perf_counter() - t0
        records.append(rec)
        _write_summary(summary, records)
    if not mine:
        _write_summary(summary, records)
    n_bad = sum(not r.ok for r in records)
    log.info("%d image(s) predicted, %d failed; summary %s", len(records) - n_bad, n_bad, summary)
    return records


_SHARD_RE = re.compile(r"^summary-(\d+)-of-(\d+)\.csv$")


def merge_summaries(out_dir: str | os.PathLike) -> Path:
    """Merge ``summary-<i>-of-<n>.csv`` files in ``out_dir`` into ``summary.csv`` (atomic).

    Rows are put back in the original input order (shard ``i`` holds items ``i, i+n, ...``).
    Missing shards are logged as a warning; shards of different ``n`` are an error.
    """
    out_dir = Path(out_dir)
    shards: dict[int, Path] = {}
    counts: set[int] = set()
    for p in sorted(out_dir.glob("summary-*-of-*.csv")):
        mt = _SHARD_RE.match(p.name)
        if mt:
            shards[int(mt.group(1))] = p
            counts.add(int(mt.group(2)))
    if not shards:
        raise InputError(f"{out_dir}: no summary-<i>-of-<n>.csv files to merge")
    if len(counts) != 1:
        raise InputError(f"{out_dir}: summary shards of different counts {sorted(counts)}; remove stale ones")
    n = counts.pop()
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        log.warning("%s: shards %s of %d are missing; merging the others", out_dir, missing, n)
    indexed: list[tuple[int, dict]] = []
    for i, p in shards.items():
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or set(SUMMARY_COLUMNS) - set(reader.fieldnames):
                raise InputError(f"{p}: not a prediction summary (columns {reader.fieldnames})")
            for k, row in enumerate(reader):
                indexed.append((i + k * n, row))
    indexed.sort(key=lambda t: t[0])
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for _, row in indexed:
        writer.writerow(row)
    out = out_dir / "summary.csv"
    atomic_write_text(out, buf.getvalue())
    return out
