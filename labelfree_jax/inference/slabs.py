"""The machinery of :mod:`labelfree_jax.inference.streaming`: chunked statistics, index maps, slab reader and writer.

* :class:`Source`: the chosen channels of a lazily read image, as float32 regions;
  :func:`moments` / :func:`stats_for`: per-channel statistics in two passes over the stored chunks.
* :func:`index_maps`: the padded working grid <-> input grid, built by ``numpy.pad`` on index arrays.
* :class:`SlabReader`: tiles gathered from one input slab per tile row; :class:`SlabWriter`: the blend
  window and the flush of final rows; :func:`run_rows`: the tiles of some rows in C order.

See :mod:`labelfree_jax.inference.streaming` for the design, the memory bound and the exactness.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.tiling import TilePlan
from labelfree_jax.transforms.geometry import PadToMultiple
from labelfree_jax.transforms.intensity import NormAroundCenter, _zscore

__all__ = [
    "SlabReader",
    "SlabWriter",
    "Source",
    "apply_steps",
    "index_maps",
    "moments",
    "region_rows",
    "run_rows",
    "stats_for",
]

log = logging.getLogger(__name__)

#: Bytes per block of the statistics passes (float64 copies of one block are made).
_BLOCK_BYTES = 16 * 2**20

# the source, in the model's layout, with the chosen channels
# --------------------------------------------------------------------------------------------
class Source:
    """The chosen channels of a lazy image, read as float32 ``(C, *spatial)`` regions."""

    def __init__(self, view: Any, channels: Sequence[int] | None):
        self.view = view
        self.channels = list(range(view.shape[0])) if channels is None else [int(c) for c in channels]
        self.shape = (len(self.channels), *view.shape[1:])
        if not (np.issubdtype(view.dtype, np.number) or view.dtype == np.bool_) or np.dtype(view.dtype).kind == "c":
            raise InputError(f"{getattr(view, 'path', None) or 'the input'}: must hold real numbers; got dtype "
                             f"{view.dtype}")

    def read(self, spatial: tuple[slice, ...]) -> np.ndarray:
        if self.channels == list(range(self.view.shape[0])):
            block = self.view[(slice(None), *spatial)]
        else:
            block = np.stack([self.view[(slice(c, c + 1), *spatial)][0] for c in self.channels])
        return block.astype(np.float32, copy=False)

    def chunk_shape(self) -> tuple[int, ...]:
        chunk = getattr(self.view, "chunk_shape", None)
        return tuple(chunk()[1:]) if chunk else tuple(self.shape[1:])


def _blocks(shape: Sequence[int], chunk: Sequence[int], channels: int) -> Iterator[tuple[slice, ...]]:
    """Chunk-aligned spatial blocks covering ``shape``, grown along the last axes up to :data:`_BLOCK_BYTES`."""
    block = [max(1, int(c)) for c in chunk]
    for a in reversed(range(len(block))):
        while block[a] < shape[a] and 8 * channels * math.prod(block) * 2 <= _BLOCK_BYTES:
            block[a] = min(shape[a], block[a] * 2)
    for corner in itertools.product(*(range(0, s, b) for s, b in zip(shape, block))):
        yield tuple(slice(c, min(c + b, s)) for c, b, s in zip(corner, block, shape))


# --------------------------------------------------------------------------------------------
# intensity transforms: statistics in chunks, then applied to any region
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Moments:
    count: int
    mean: np.ndarray  # float64 per channel
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray


def apply_steps(block: np.ndarray, prepared: Sequence[tuple[Any, Any]]) -> np.ndarray:
    """The intensity steps, element by element exactly as :meth:`Pipeline.apply` computes them."""
    for step, stats in prepared:
        if stats is not None:
            block = _zscore(block, *stats)
        else:
            block = step._apply(block, None)[0]
    return block


def moments(source: Source, prepared, z_range: tuple[int, int] | None, progress: bool, *, std: bool = True
            ) -> Moments:
    """Per-channel count, mean, population std, min and max of ``prepared(source)`` (over ``z_range`` of axis 1).

    Two passes over the stored chunks (one without ``std``: the std is then NaN); NaN/Inf are
    refused (one line naming the file).
    """
    shape = list(source.shape[1:])
    offset = 0
    if z_range is not None:
        offset, shape[0] = z_range[0], z_range[1] - z_range[0]
    blocks = list(_blocks(shape, source.chunk_shape(), source.shape[0]))

    def region(sl):
        if not offset:
            return sl
        return (slice(sl[0].start + offset, sl[0].stop + offset), *sl[1:])

    c = source.shape[0]
    total, low, high = np.zeros(c), np.full(c, np.inf), np.full(c, -np.inf)
    bad = 0
    for sl in tqdm(blocks, desc="statistics", unit="block", disable=not progress, leave=False):
        flat = apply_steps(source.read(region(sl)), prepared).reshape(c, -1)
        bad += int(flat.size - np.count_nonzero(np.isfinite(flat)))
        total += flat.sum(axis=1, dtype=np.float64)
        low, high = np.minimum(low, flat.min(axis=1)), np.maximum(high, flat.max(axis=1))
    if bad:
        where = getattr(source.view, "path", None) or "the input"
        raise InputError(f"{where}: input image with shape {source.shape} contains {bad} NaN/Inf values")
    count = math.prod(shape)
    mean = total / count
    if not std:
        return Moments(count, mean, np.full(c, np.nan), low, high)
    squares = np.zeros(c)
    for sl in blocks:
        flat = apply_steps(source.read(region(sl)), prepared).reshape(c, -1)
        squares += ((flat.astype(np.float64) - mean[:, None]) ** 2).sum(axis=1)
    return Moments(count, mean, np.sqrt(squares / count), low, high)


def stats_for(step, source: Source, prepared, progress: bool, known: Moments | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float64 per channel) a z-scoring ``step`` takes, as its ``_apply`` would (``known``: the
    moments of its input, already computed)."""
    z_range = None
    if isinstance(step, NormAroundCenter):
        if len(source.shape) != 4:
            raise InputError(f"norm_around_center needs a 3D image (C, Z, Y, X); got shape {source.shape} "
                             "(use 'normalize' for 2D images)")
        n_z = source.shape[1]
        if n_z < step.n_slices:
            if step.fallback == "error":
                raise InputError(f"norm_around_center: the image has {n_z} z-slices, fewer than n_slices="
                                 f"{step.n_slices} (set fallback='whole' to use the whole stack)")
            log.warning("norm_around_center: image has %d z-slices < n_slices=%d; using the whole stack", n_z,
                        step.n_slices)
        z_range = step.center_slices(n_z)
    m = known if known is not None else moments(source, prepared, z_range, progress)
    for c in range(len(m.mean)):
        if m.low[c] == m.high[c]:
            raise InputError(f"{step.name}: channel {c} is constant (every value is {float(m.low[c])}), so it has "
                             "standard deviation 0 and cannot be z-scored")
    return m.mean, m.std


# --------------------------------------------------------------------------------------------
# geometry: index maps between the input grid and the padded working grid
# --------------------------------------------------------------------------------------------
def _pad_index(idx: np.ndarray, before: int, after: int, mode: str) -> np.ndarray:
    if not (before or after):
        return idx
    if mode == "constant":
        return np.pad(idx, (before, after), mode="constant", constant_values=-1)
    return np.pad(idx, (before, after), mode=mode)


def index_maps(spatial: tuple[int, ...], geometric, plan: TilePlan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per axis: padded working index -> input index (-1: constant 0), and input index -> padded working index.

    Built by applying ``numpy.pad`` (the transforms' and the tile plan's own calls) to index arrays,
    so reflections and edge repeats are exactly those of the in-memory path.
    """
    forward = [np.arange(n) for n in spatial]
    back = [np.arange(n) for n in spatial]
    shape = tuple(spatial)
    for step in geometric:
        if isinstance(step, PadToMultiple):
            widths = step.pad_width(shape)
            forward = [_pad_index(f, b, a, step.mode) for f, (b, a) in zip(forward, widths)]
            back = [j + b for j, (b, _) in zip(back, widths)]
        else:
            widths = step.crop_width(shape)
            forward = [f[b:len(f) - a] for f, (b, a) in zip(forward, widths)]
            back = [np.clip(j - b, 0, len(f) - 1) for j, (b, _), f in zip(back, widths, forward)]
        shape = step.output_spatial_shape(shape)
    forward = [_pad_index(f, b, a, mode) for f, (b, a), mode in zip(forward, plan.pad, plan.pad_modes)]
    back = [j + b for j, (b, _) in zip(back, plan.pad)]
    return forward, back


# --------------------------------------------------------------------------------------------
# tiles in, slabs out
# --------------------------------------------------------------------------------------------
def _slice_or_index(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is a run of consecutive indices (a view instead of a gathered copy)."""
    if idx.size and int(idx[-1]) - int(idx[0]) == idx.size - 1 and (idx.size < 2 or bool(np.all(np.diff(idx) == 1))):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class SlabReader:
    """Tiles of the padded working grid, gathered from the input slab of the current tile row.

    The slab buffer (``C_in`` x the rows one tile row covers x every input column) is allocated
    once and refilled plane by plane for each tile row (tiles come in C order: a row never returns),
    so the heap does not grow with the number of rows.
    """

    def __init__(self, source: Source, prepared, forward: list[np.ndarray], plan: TilePlan):
        self.source, self.prepared, self.forward, self.plan = source, prepared, forward, plan
        full = [f[f >= 0] for f in forward[1:]]
        self.rest = [(int(f.min()), int(f.max()) + 1) for f in full]
        depth = min(plan.tile_shape[0], source.shape[1])
        self.buffer = np.empty((source.shape[0], depth, *(b - a for a, b in self.rest)), np.float32)
        self.start: int | None = None
        self.lo = 0

    def _slab(self, start: int) -> tuple[int, np.ndarray]:
        if start != self.start:
            rows = self.forward[0][start:start + self.plan.tile_shape[0]]
            rows = rows[rows >= 0]
            lo, hi = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, 1)
            if hi - lo > self.buffer.shape[1]:  # pragma: no cover - padding maps never spread a tile row wider
                self.buffer = np.empty((self.buffer.shape[0], hi - lo, *self.buffer.shape[2:]), np.float32)
            for k, z in enumerate(range(lo, hi)):  # plane by plane: z-scoring's float64 temporaries stay one plane
                sl = (slice(z, z + 1), *(slice(a, b) for a, b in self.rest))
                self.buffer[:, k:k + 1] = apply_steps(self.source.read(sl), self.prepared)
            self.start, self.lo, self.hi = start, lo, hi
        return self.lo, self.buffer[:, : self.hi - self.lo]

    def tile(self, corner: tuple[int, ...], out: np.ndarray) -> None:
        """Fill ``out`` ``(C_in, *tile)`` with the padded working grid's tile at ``corner``."""
        lo, slab = self._slab(corner[0])
        index, valid = [], []
        offsets = (lo, *(a for a, _ in self.rest))
        for axis, (c, t) in enumerate(zip(corner, self.plan.tile_shape)):
            idx = self.forward[axis][c:c + t]
            ok = idx >= 0
            index.append(_slice_or_index(np.where(ok, idx - offsets[axis], 0)))
            valid.append(ok)
        if all(isinstance(i, slice) for i in index):
            out[...] = slab[(slice(None), *index)]  # a view: no temporary
        else:
            out[...] = slab[np.ix_(range(slab.shape[0]), *(np.arange(i.start, i.stop) if isinstance(i, slice) else i
                                                           for i in index))]
        for axis, ok in enumerate(valid):
            if not ok.all():
                sl = [slice(None)] * out.ndim
                sl[axis + 1] = ~ok
                out[tuple(sl)] = 0.0


class SlabWriter:
    """The blend window (``t0`` rows of the padded working grid) and the flush of finished rows to level 0."""

    def __init__(self, plan: TilePlan, back: Sequence[np.ndarray], target: Any, c_out: int, *,
                 origin: int = 0, limits: tuple[int, int] | None = None):
        self.plan, self.back, self.target = plan, back, target
        depth = plan.tile_shape[0]
        self.acc = np.zeros((c_out, depth, *plan.padded_shape[1:]), np.float32)
        self.wsum = np.zeros((depth, *plan.padded_shape[1:]), np.float32)
        self.origin = origin  # padded working row of the window's first row: the first tile row's start
        self.limits = limits or (0, plan.padded_shape[0])  # only these padded working rows are written
        self.flushed = self.limits[0]  # padded working rows before this are written (or not ours)
        self.bad = 0
        self.low, self.high = math.inf, -math.inf
        self.rest = [_slice_or_index(b) for b in back[1:]]
        self.out = np.empty((c_out, depth, *(len(b) for b in back[1:])), np.float32)  # reused by every flush

    def add(self, corner: tuple[int, ...], out: np.ndarray, w: np.ndarray) -> None:
        if corner[0] > self.origin:
            self._advance(corner[0])
        rel = corner[0] - self.origin
        sl = (slice(rel, rel + self.plan.tile_shape[0]),
              *(slice(c, c + t) for c, t in zip(corner[1:], self.plan.tile_shape[1:])))
        self.acc[(slice(None), *sl)] += out.astype(np.float32, copy=False) * w
        self.wsum[sl] += w

    def _advance(self, start: int) -> None:
        """Flush every row before ``start`` and move the window to begin there."""
        self.flush(start)
        shift = start - self.origin
        depth = self.plan.tile_shape[0]
        for r in range(max(0, depth - shift)):  # row by row: no temporary (the rows do not overlap)
            self.acc[:, r] = self.acc[:, r + shift]
            self.wsum[r] = self.wsum[r + shift]
        keep = max(0, depth - shift)
        self.acc[:, keep:] = 0.0
        self.wsum[keep:] = 0.0
        self.origin = start

    def flush(self, stop: int) -> None:
        """Write the input-grid rows whose working rows lie in ``[flushed, stop)`` (all final)."""
        stop = min(stop, self.limits[1])
        if stop <= self.flushed:
            return
        rows = self.back[0]
        i0, i1 = (int(np.searchsorted(rows, v, side="left")) for v in (self.flushed, stop))
        self.flushed = stop
        if i1 <= i0:
            return
        local = _slice_or_index(rows[i0:i1] - self.origin)
        index = (local, *self.rest)
        if all(isinstance(i, slice) for i in index):  # views, divided into the reused buffer
            acc = np.divide(self.acc[(slice(None), *index)], self.wsum[index], out=self.out[:, : i1 - i0])
        else:  # crop_to_multiple's edge repeats: gathered copies
            full = [np.arange(i.start, i.stop) if isinstance(i, slice) else i for i in index]
            acc = self.acc[np.ix_(range(self.acc.shape[0]), *full)]
            acc /= self.wsum[np.ix_(*full)]
        finite = np.isfinite(acc)
        n_finite = int(np.count_nonzero(finite))
        self.bad += int(acc.size - n_finite)
        if n_finite == acc.size:
            self.low, self.high = min(self.low, float(acc.min())), max(self.high, float(acc.max()))
        elif n_finite:
            self.low = min(self.low, float(np.min(acc, where=finite, initial=np.inf)))
            self.high = max(self.high, float(np.max(acc, where=finite, initial=-np.inf)))
        self.target[(slice(None), slice(i0, i1))] = acc

    def finish(self) -> None:
        self.flush(self.plan.padded_shape[0])


def run_rows(fn: Callable, reader: SlabReader, writer: SlabWriter, plan: TilePlan, weights_for, *, batch_size: int,
             c_in: int, progress: bool, rows: tuple[int, int] | None = None) -> None:
    """The tiles of tile rows ``rows`` (``(first, stop)``, default all) in C order, ``batch_size`` per call, the
    next batch dispatched before the last is blended; then the writer's last rows are flushed."""
    first, stop = rows or (0, plan.grid[0])
    starts = plan.starts[0][first:stop]
    corners = [c for c in plan.tile_starts() if starts[0] <= c[0] <= starts[-1]]
    pending = None
    with tqdm(total=len(corners), desc="tiles", unit="tile", disable=not progress, leave=False) as bar:
        for b in range(0, len(corners), batch_size):
            chunk = corners[b:b + batch_size]
            batch = np.empty((batch_size, c_in, *plan.tile_shape), np.float32)
            for j, corner in enumerate(chunk):
                reader.tile(corner, batch[j])
            batch[len(chunk):] = batch[0]
            out = fn(batch)  # asynchronous on JAX backends
            if pending is not None:
                _blend(writer, weights_for, *pending, plan)
                bar.update(len(pending[1]))
            pending = (out, chunk)
        if pending is not None:
            _blend(writer, weights_for, *pending, plan)
            bar.update(len(pending[1]))
    writer.finish()


def region_rows(plan: TilePlan, first: int, stop: int) -> tuple[tuple[int, int], int, tuple[int, int]]:
    """What a worker computes to write the padded working rows of tile rows ``[first, stop)``, bit for bit.

    Returns ``(tile rows to run, window origin, padded working rows to write)``: the rows it
    writes are ``[start[first], start[stop])`` (from 0 for the first region, to the end for the
    last); every tile covering them is run, in C order, so each voxel gets the contributions of
    the whole-image run in the same order: the tile rows from the first that reaches
    ``start[first]`` (earlier rows overlap it) to ``stop``.
    """
    starts, depth = plan.starts[0], plan.tile_shape[0]
    lo = starts[first] if first > 0 else 0
    hi = starts[stop] if stop < len(starts) else plan.padded_shape[0]
    begin = next(j for j in range(len(starts)) if starts[j] + depth > lo)
    return (begin, stop), starts[begin], (lo, hi)


def _blend(writer: SlabWriter, weights_for, out, chunk, plan: TilePlan) -> None:
    out = np.asarray(out)
    if out.ndim != plan.ndim + 2 or out.shape[2:] != plan.tile_shape or out.shape[1] != writer.acc.shape[0]:
        raise ValueError(f"fn returned shape {out.shape}; expected (B, {writer.acc.shape[0]}, *{plan.tile_shape})")
    for j, corner in enumerate(chunk):
        writer.add(corner, out[j], weights_for(corner))


