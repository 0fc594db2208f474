"""Prediction of a stored volume larger than memory: read the tiles it needs, write each finished slab at once.

:func:`predict_stored` predicts a :class:`~labelfree_jax.imagefiles.lazy.LazyImage` (OME-Zarr level 0,
or a TIFF served chunk by chunk) into an OME-Zarr, holding only slabs of the volume:

1. **Statistics, chunk by chunk.** The z-scoring steps of the signal transforms (``normalize``,
   ``norm_around_center``) need per-channel mean and standard deviation: two passes over the
   stored chunks (sum in float64, then the sum of squared deviations from that mean, as numpy's
   ``mean`` / ``std`` compute them), also counting NaN/Inf (refused, as in memory) and checking
   for a constant channel. The values equal the in-memory ones to float64 rounding (the sums are
   grouped differently, so the last of 53 bits may differ).
2. **Tiles in slabs.** The tile plan is the in-memory one (:func:`~labelfree_jax.inference.tiling.plan_tiles`
   on the working grid, starts aligned to ``2**depth``); tiles run in the same C order, so every
   voxel receives the same float32 contributions in the same order. The tiles of one *row*
   (same start along the first spatial axis, Z in 3D, Y in 2D) read one input slab (the rows
   they cover, every column; intensity transforms applied, the geometric padding and cropping
   done by index maps that ``numpy.pad`` itself builds, so they are exact), and are blended into
   an accumulator window ``t0`` rows deep (``t0``: the tile's first side).
3. **Flush.** When the first tile of row ``k+1`` arrives, every working-grid row before its start
   is final (no later tile touches it): those rows are divided by their weight sum, mapped back
   to the input grid (inverse padding/cropping) and written to the output's level 0 at once; the
   window then moves to the new row. After the last tile the rest is flushed.
4. **Pyramid.** Level 0 is streamed into a temporary zarr array beside the output; the OME-Zarr
   (level 0 and its pyramid, metadata, provenance) is then written from it chunk by chunk
   (:func:`~labelfree_jax.imagefiles.zarr_write.write_ome_zarr_from_level0`) under a temporary
   name and renamed: an interrupted run leaves no half-written image, and a rerun redoes it.

Peak memory, beyond JAX, the weights and one batch of network activations: the accumulator window
``4 (C_out + 1) t0 P1 P2`` bytes (``P1 P2``: the padded working sides after the first), one input
slab ``4 C_in t0 S1 S2``, one flushed slab and its weight sums ``4 (C_out + 1) t0 S1 S2`` (``S1 S2``:
input sides), two batches of tiles and the zarr chunks in flight. None of it grows with the
volume's first spatial axis: a stack 64 times deeper needs the same memory (a plane 64 times larger
needs 64 times more).

:func:`plan_stream` (statistics, tile plan; picklable :class:`StreamPlan`) and :func:`run_stream`
(the tiles of some tile rows, writing only their final rows) are separate so that bands of tile
rows can run on different machines (:func:`~labelfree_jax.inference.dask_batch.predict_regions_on_dask`).

The result equals :func:`~labelfree_jax.inference.predict.predict_array` for the same input bit for
bit when the statistics are equal (no z-scoring step, or given the same statistics), and to float32
rounding of the z-scored input otherwise (see step 1).

Not streamed (:class:`NotStreamable`, the batch then predicts in memory, or refuses when streaming
was demanded): a resize to the working pixel size (the input's pixel size differs from the
package's, or a fixed zoom), percentile normalisation measured on the image (``normalize_percentile``
with ``statistics="image"``; with dataset statistics it is streamed), test-time augmentation, a
geometric step before an intensity step, an image whose layout differs from the model's (a single
plane for a 3D model).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.zarr_write import DEFAULT_NGFF_VERSION, create_level0, write_ome_zarr_from_level0
from labelfree_jax.inference.checks import check_size, input_warnings, intensity_warnings
from labelfree_jax.inference.predict import _check_finite_count, _report, _working_pipeline
from labelfree_jax.inference.slabs import (
    SlabReader,
    SlabWriter,
    Source,
    index_maps,
    moments,
    region_rows,
    run_rows,
    stats_for,
)
from labelfree_jax.inference.tile_policy import (
    choose_tile_shape,
    network_of,
    resolve_tile_overlap,
    shard_over_devices,
    size_multiple,
)
from labelfree_jax.inference.tiling import BLEND_KINDS, TilePlan, plan_tiles, tile_weights
from labelfree_jax.transforms.geometry import CropToMultiple, PadToMultiple, Resize
from labelfree_jax.transforms.intensity import Clip, Normalize, NormAroundCenter

__all__ = [
    "STREAM_BYTES_ENV",
    "NotStreamable",
    "StreamPlan",
    "plan_stream",
    "predict_stored",
    "predict_to_level0",
    "run_stream",
    "stream_threshold_bytes",
]

log = logging.getLogger(__name__)

#: Environment variable: stream automatically when the in-memory path would hold more bytes than this.
STREAM_BYTES_ENV = "LABELFREE_STREAM_BYTES"

class NotStreamable(Exception):
    """This prediction cannot be streamed (the message says why); predict it in memory instead."""


def stream_threshold_bytes() -> int:
    """In-memory bytes above which :func:`~labelfree_jax.inference.batch.predict_files` streams by default.

    :data:`STREAM_BYTES_ENV` when set, else a quarter of the physical memory.
    """
    value = os.environ.get(STREAM_BYTES_ENV, "").strip()
    if value:
        try:
            return int(float(value))
        except ValueError:
            raise InputError(f"{STREAM_BYTES_ENV}={value!r} is not a number of bytes") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 * 2**30


def in_memory_bytes(model, shape: Sequence[int]) -> int:
    """The float32 arrays the in-memory path holds for an input ``(C, *spatial)``: input, working and padded
    copies, the accumulators and the output (``4 (2 C_in + 2 C_out + 1) V`` bytes)."""
    net = network_of(model)
    voxels = math.prod(int(s) for s in shape[1:])
    return 4 * voxels * (2 * int(net.in_channels) + 2 * int(net.out_channels) + 1)


def _pointwise(step) -> bool:
    """An intensity step that maps each voxel on its own (no statistics of the image)."""
    if isinstance(step, Clip):
        return True
    return getattr(step, "name", "") == "normalize_percentile" and getattr(step, "statistics", None) == "dataset"


def _split(pipeline) -> tuple[list[Any], list[Any]]:
    """``(intensity steps, geometric steps)``; :class:`NotStreamable` for what is not streamed (the reason)."""
    intensity, geometric = [], []
    for step in pipeline.steps:
        if isinstance(step, Resize):
            raise NotStreamable(f"the signal transforms resample the image ({step.name}: the input's pixel size is "
                                "not the package's working pixel size); resampling is not streamed")
        if step.is_geometric:
            if not isinstance(step, (PadToMultiple, CropToMultiple)):
                raise NotStreamable(f"the geometric transform {step.name!r} is not streamed")
            geometric.append(step)
        elif geometric:
            raise NotStreamable(f"the signal transforms put {step.name!r} after a geometric step")
        elif isinstance(step, (Normalize, NormAroundCenter)) or _pointwise(step):
            intensity.append(step)
        else:
            raise NotStreamable(f"the transform {step.name!r} needs statistics of the whole image that are not "
                                "streamed (percentiles)")
    return intensity, geometric


# --------------------------------------------------------------------------------------------
# one stored image
# --------------------------------------------------------------------------------------------
def _prepare(model, source: Source, pixel_sizes, warnings: list[str] | None, progress: bool):
    """Checks, warnings and the streamed intensity statistics: ``(prepared steps, geometric steps)``."""
    net = network_of(model)
    nd = int(getattr(model, "ndim", net.ndim))
    if len(source.shape) != nd + 1:
        raise NotStreamable(f"a {nd}D model and an image of shape {source.shape}: the layouts differ")
    if source.shape[0] != net.in_channels:
        raise InputError(f"the model takes {net.in_channels} input channel(s); the image has {source.shape[0]}")
    check_size(source.shape)
    spatial = tuple(source.shape[1:])
    pipeline, found = _working_pipeline(model.config, spatial, pixel_sizes)
    intensity, geometric = _split(pipeline)
    stub = np.broadcast_to(np.zeros((source.shape[0],) + (1,) * nd, np.float32), source.shape)
    config = model.config
    statistics = getattr(config, "signal_statistics", None)
    if statistics is not None:
        config = config.model_copy(update={"signal_statistics": None})
    prepared: list[tuple[Any, Any]] = []
    raw = None  # the raw input's moments: for the intensity warnings, or the first step's normalize
    first_whole = bool(intensity) and isinstance(intensity[0], Normalize)
    if statistics is not None or first_whole:
        raw = moments(source, [], None, progress)
    elif not any(isinstance(s, Normalize) for s in intensity):
        moments(source, [], None, progress, std=False)  # the NaN/Inf check a whole-image normalize makes
    for i, step in enumerate(intensity):
        stats = None
        if isinstance(step, (Normalize, NormAroundCenter)):
            stats = stats_for(step, source, prepared, progress, known=raw if i == 0 and first_whole else None)
        prepared.append((step, stats))
    checks = input_warnings(config, stub, nd)  # sizes and normalisation (the stub's values are not read)
    if raw is not None and statistics is not None:
        proxy = np.stack([raw.mean - raw.std, raw.mean + raw.std], axis=1)  # the same mean and population std
        checks += intensity_warnings(proxy, statistics)
    _report(checks + found, warnings)
    return prepared, geometric, pipeline


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Everything a (possibly remote) run of some tile rows needs besides the model and the data (picklable).

    Attributes:
        channels: the channels of the view read. prepared: the intensity steps with their
            statistics. plan: the tile plan on the working grid. forward / back: the index maps
            (:func:`~labelfree_jax.inference.slabs.index_maps`). blend: the blend kind.
        batch_size: tiles per network call. c_out: output channels. shape: the output's shape.
    """

    channels: tuple[int, ...]
    prepared: tuple[tuple[Any, Any], ...]
    plan: TilePlan
    forward: tuple[np.ndarray, ...]
    back: tuple[np.ndarray, ...]
    blend: str
    batch_size: int
    c_out: int
    shape: tuple[int, ...]


def plan_stream(
    model,
    view: Any,
    *,
    channels: Sequence[int] | None = None,
    pixel_sizes: dict[str, float] | None = None,
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    max_memory_bytes: int | None = None,
    progress: bool = True,
    warnings: list[str] | None = None,
) -> StreamPlan:
    """Check the input, stream its statistics and plan the tiles (arguments: see :func:`predict_to_level0`).

    Raises:
        NotStreamable, InputError: as :func:`predict_to_level0`.
    """
    if tta:
        raise NotStreamable("test-time augmentation (tta) is not streamed")
    net = network_of(model)
    defaults = getattr(model.config, "prediction", None)
    blend = blend or getattr(defaults, "blend", None) or "gaussian"
    if blend not in BLEND_KINDS:
        raise InputError(f"blend must be one of {BLEND_KINDS}, got {blend!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    source = Source(view, channels)
    prepared, geometric, pipeline = _prepare(model, source, pixel_sizes, warnings, progress)
    spatial = tuple(source.shape[1:])
    work = tuple(pipeline.output_shape(spatial, pixel_sizes=pixel_sizes))
    m = size_multiple(net)
    tile = choose_tile_shape(net, work, tile_shape=tile_shape or getattr(defaults, "tile_shape", None),
                             max_memory_bytes=max_memory_bytes, batch_size=int(batch_size))
    ov = resolve_tile_overlap(overlap if overlap is not None else getattr(defaults, "overlap", None), tile, work, m)
    plan = plan_tiles(work, tile, ov, align=m)
    forward, back = index_maps(spatial, geometric, plan)
    log.info("streaming %s (working grid %s) with tiles %s, overlap %s, batch %d: %d tiles in %d slabs",
             spatial, work, tile, ov, batch_size, plan.n_tiles, plan.grid[0])
    return StreamPlan(tuple(source.channels), tuple(prepared), plan, tuple(forward), tuple(back), blend,
                      int(batch_size), int(net.out_channels), (int(net.out_channels), *spatial))


def run_stream(model, view: Any, target: Any, sp: StreamPlan, *, regions: tuple[int, int] | None = None,
               progress: bool = True) -> tuple[int, float, float]:
    """Run the tiles of ``sp`` (tile rows ``regions = (first, stop)``, default all) and write their final rows.

    Returns ``(non-finite values written, min, max)`` of what was written. Rows of other regions
    are not touched (see :func:`~labelfree_jax.inference.slabs.region_rows`).
    """
    plan = sp.plan
    first, stop = regions or (0, plan.grid[0])
    rows, origin, limits = region_rows(plan, first, stop)
    fn, batch_size = shard_over_devices(model.forward_fn(), sp.batch_size)
    reader = SlabReader(Source(view, sp.channels), sp.prepared, list(sp.forward), plan)
    writer = SlabWriter(plan, sp.back, target, sp.c_out, origin=origin, limits=limits)
    run_rows(fn, reader, writer, plan, tile_weights(plan, sp.blend), batch_size=batch_size, c_in=len(sp.channels),
             progress=progress, rows=rows)
    return writer.bad, writer.low, writer.high


def predict_to_level0(
    model,
    view: Any,
    target: Any,
    *,
    channels: Sequence[int] | None = None,
    pixel_sizes: dict[str, float] | None = None,
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    max_memory_bytes: int | None = None,
    progress: bool = True,
    warnings: list[str] | None = None,
) -> tuple[float, float]:
    """Predict the stored ``view`` slab by slab into ``target`` (see the module docstring); returns its (min, max).

    Args:
        model: as :func:`~labelfree_jax.inference.predict.predict_array`.
        view: ``(C, Z, Y, X)`` (3D model) or ``(C, Y, X)`` (2D model), read region by region
            (:class:`~labelfree_jax.imagefiles.lazy.LazyImage`, or a numpy / memory-mapped array).
        target: a writable ``(C_out, *spatial of view)`` float32 array (a zarr array: each slab
            is assigned once, in order, as soon as it is final).
        channels: the channels of ``view`` to predict from (default: all).
        pixel_sizes, tile_shape, overlap, batch_size, blend, max_memory_bytes, progress, warnings:
            as :func:`~labelfree_jax.inference.predict.predict_array`.
        tta: must be False (test-time augmentation is not streamed).

    Raises:
        NotStreamable: TTA, a resize, a geometric step before an intensity step, another layout.
        InputError: as ``predict_array`` (wrong channels, NaN/Inf in the input or the prediction,
            too small, a constant channel), or a region that cannot be read (naming the file).
    """
    sp = plan_stream(model, view, channels=channels, pixel_sizes=pixel_sizes, tile_shape=tile_shape,
                     overlap=overlap, batch_size=batch_size, blend=blend, tta=tta,
                     max_memory_bytes=max_memory_bytes, progress=progress, warnings=warnings)
    bad, low, high = run_stream(model, view, target, sp, progress=progress)
    _check_finite_count(bad, math.prod(sp.shape))
    return low, high


def predict_stored(
    model,
    view: Any,
    out_path: str | os.PathLike,
    *,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    provenance: Mapping | Callable[[], Mapping] | None = None,
    ngff_version: str | None = None,
    chunks: Sequence[int] | None = None,
    **options,
) -> Path:
    """Predict a stored image into the OME-Zarr ``out_path`` without holding the volume in memory.

    ``view``: see :func:`predict_to_level0` (``options``: its keyword arguments). ``axes``:
    ``"CZYX"`` / ``"CYX"`` (default from the view's dimensions); ``channel_names``, ``provenance``,
    ``ngff_version``, ``chunks``: as :func:`~labelfree_jax.imagefiles.zarr_write.write_ome_zarr`
    (``provenance`` may be a callable, called once the prediction has run, e.g. to add its warnings).
    The pixel sizes written are ``options["pixel_sizes"]``. Atomic: a temporary level 0 beside
    ``out_path``, then the OME-Zarr under a temporary name, renamed when complete.

    Raises:
        NotStreamable, InputError: as :func:`predict_to_level0`; InputError when the write fails.
    """
    net = network_of(model)
    out = Path(out_path)
    version = ngff_version or DEFAULT_NGFF_VERSION
    shape = (int(net.out_channels), *view.shape[1:])
    axes = axes or ("CZYX" if len(shape) == 4 else "CYX")
    scratch, level0 = create_level0(out, shape, chunks=chunks, ngff_version=version)
    try:
        window = predict_to_level0(model, view, level0, **options)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    sizes = options.get("pixel_sizes")
    sizes = {k: v for k, v in (sizes or {}).items() if k.upper() in axes[1:]} or None
    return write_ome_zarr_from_level0(out, scratch, axes=axes, channel_names=channel_names, pixel_sizes=sizes,
                                      provenance=provenance() if callable(provenance) else provenance, window=window, chunks=chunks, ngff_version=version)
