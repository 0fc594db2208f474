"""Tiled application of a function to a large array: plan (geometry) -> run -> blend.

Three independent steps:

1. :func:`plan_tiles` — pure geometry, no arrays. Given a spatial shape (any number of
   axes), a tile shape and an overlap, it returns a :class:`TilePlan`: the padding that
   makes every axis at least one tile long, and the tile start positions per axis (the
   first tile at 0, the last flush with the end, evenly spaced so that neighbours overlap
   by *at least* the requested overlap, optionally on multiples of ``align``: a U-Net is
   only shift-equivariant for shifts that are multiples of ``2**depth``, so unaligned tiles
   differ from the whole-volume output everywhere, not only near their borders).
2. :func:`blend_weights` — an explicit, strictly positive weight array of tile shape that
   tapers towards the tile borders over the overlap (tile borders are where a
   convolutional network's output is worst: its receptive field is cut off there), except
   on tile sides that lie on the volume's border.
3. :func:`run_tiles` — runs any callable on fixed-shape batches of tiles and blends the
   results into float32 accumulators of the output size, ``sum(w * out) / sum(w)``.

Arrays are channel-first: ``x`` is ``(C, *spatial)``; the callable maps
``(B, C_in, *tile)`` to ``(B, C_out, *tile)``. Coordinates and sizes are in voxels.

Memory of :func:`run_tiles`: the padded input (one copy), two float32 accumulators
(``C_out`` channels and one weight channel over the padded volume) and at most two batches
of tiles in flight (the next batch is dispatched before the previous one is accumulated,
so an asynchronous backend computes while the host blends). It never keeps a list of all
tiles.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "BLEND_KINDS",
    "PAD_MODES",
    "TilePlan",
    "blend_weights",
    "pad_to_plan",
    "plan_tiles",
    "predict_tiled",
    "resolve_overlap",
    "run_tiles",
]

log = logging.getLogger(__name__)

BLEND_KINDS = ("gaussian", "triangular", "uniform")
PAD_MODES = ("reflect", "symmetric", "edge", "constant")

BlendKind = Literal["gaussian", "triangular", "uniform"]
PadMode = Literal["reflect", "symmetric", "edge", "constant"]


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles go (all in voxels, one entry per spatial axis).

    Attributes:
        shape: spatial shape of the array to tile.
        tile_shape: spatial shape of every tile.
        overlap: requested minimum overlap between neighbouring tiles per axis (the actual
            overlap can be larger, because starts are spread evenly).
        pad: ``(before, after)`` padding per axis applied before tiling (non-zero only where
            ``shape`` is smaller than ``tile_shape`` or not a multiple of the alignment).
        pad_modes: ``numpy.pad`` mode per axis: the requested mode, except that ``reflect``
            falls back to ``symmetric`` when the pad exceeds ``side - 1`` and to ``edge``
            when it exceeds ``side``.
        starts: tile start positions per axis, in padded coordinates.
    """

    shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    overlap: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    pad_modes: tuple[str, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + b + a for s, (b, a) in zip(self.shape, self.pad))

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of tiles per axis."""
        return tuple(len(s) for s in self.starts)

    @property
    def n_tiles(self) -> int:
        return math.prod(self.grid)

    def __len__(self) -> int:
        return self.n_tiles

    def tile_starts(self) -> Iterator[tuple[int, ...]]:
        """Start corner of every tile (padded coordinates), in C order."""
        return itertools.product(*self.starts)

    def tile_slices(self) -> Iterator[tuple[slice, ...]]:
        """Spatial slices of every tile in the padded array, in C order."""
        for corner in self.tile_starts():
            yield tuple(slice(s, s + t) for s, t in zip(corner, self.tile_shape))

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices that take the original region back out of the padded array."""
        return tuple(slice(b, b + s) for s, (b, _) in zip(self.shape, self.pad))

    def max_coverage(self) -> int:
        """The largest number of tiles covering any single voxel."""
        worst = 1
        for starts, t in zip(self.starts, self.tile_shape):
            ends = [s + t for s in starts]
            # coverage along one axis is piecewise constant; check at every start
            worst *= max(sum(1 for s, e in zip(starts, ends) if s <= p < e) for p in starts)
        return worst


def _per_axis(value, n: int, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (value,) * n
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a number or a sequence of {n} numbers, got {value!r}") from None
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{name} {values} has {len(values)} entries, the array has {n} spatial axes")
    return values


def resolve_overlap(tile_shape: Sequence[int], overlap) -> tuple[int, ...]:
    """Overlap in voxels per axis.

    ``overlap``: a number or one per axis. A float in ``[0, 1)`` is a fraction of the tile side
    (rounded to the nearest voxel); a whole number (``int``, or a float such as ``64.0``, as
    JSON configs give) is voxels. ``None`` means 0.
    """
    tile_shape = tuple(int(t) for t in tile_shape)
    if overlap is None:
        return (0,) * len(tile_shape)
    out = []
    for o, t in zip(_per_axis(overlap, len(tile_shape), "overlap"), tile_shape):
        if isinstance(o, (float, np.floating)) and 0.0 <= o < 1.0:
            out.append(round(float(o * t)))
        elif isinstance(o, (int, float, np.integer, np.floating)) and not isinstance(o, bool) and o == int(o):
            out.append(int(o))
        else:
            raise ValueError(f"overlap must be whole voxels or a fraction in [0, 1), got {o!r}")
    return tuple(out)


def _pad_mode_for(side: int, before: int, after: int, mode: str) -> str:
    if mode not in ("reflect", "symmetric"):
        return mode
    biggest = max(before, after)
    if mode == "reflect" and biggest <= side - 1:
        return "reflect"
    if biggest <= side:
        return "symmetric"
    return "edge"


def plan_tiles(
    shape: Sequence[int],
    tile_shape: Sequence[int] | int,
    overlap=None,
    *,
    pad_mode: PadMode = "reflect",
    align: int | Sequence[int] = 1,
) -> TilePlan:
    """Plan tiles covering an N-D spatial ``shape``.

    Args:
        shape: spatial shape (voxels), any number of axes.
        tile_shape: tile side per axis (or one int for all).
        overlap: minimum overlap of neighbouring tiles, voxels (int) or tile fraction (float);
            see :func:`resolve_overlap`.
        pad_mode: how the padding is filled (numpy.pad mode, with the fallbacks described in
            :class:`TilePlan`).
        align: tile starts (in padded coordinates) are multiples of ``align`` (per axis or
            one int). A U-Net that downsamples ``d`` times by 2 is only shift-equivariant for
            shifts that are multiples of ``2**d``: with ``align=2**d`` a tile's interior
            equals the network output on the whole padded volume.

    Each axis of length ``S`` is padded to ``P = max(T, round_up(S, align))`` (the padding
    split evenly before/after; none when ``S`` is already long enough and aligned). With
    ``K = (P - T) / align`` possible start positions beyond 0 and ``g = floor((T - O) / align)``
    the largest allowed step, there are ``n = ceil(K / g) + 1`` tiles starting at
    ``align * floor(k K / (n - 1))``, ``k = 0..n-1``: the first at 0, the last flush with
    ``P``, neighbours overlapping by at least ``O``.
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    if n == 0:
        raise ValueError("cannot tile an array with no spatial axes")
    if any(s < 1 for s in shape):
        raise ValueError(f"every spatial side must be >= 1, got shape {shape}")
    tiles = _per_axis(tile_shape, n, "tile_shape")
    if any(int(t) != t for t in tiles):
        raise ValueError(f"tile sides must be whole voxels, got {tiles}")
    tiles = tuple(int(t) for t in tiles)
    if any(t < 1 for t in tiles):
        raise ValueError(f"every tile side must be >= 1, got tile shape {tiles}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    aligns = _per_axis(align, n, "align")
    if any(int(a) != a or a < 1 for a in aligns):
        raise ValueError(f"align must be whole voxels >= 1, got {aligns}")
    aligns = tuple(int(a) for a in aligns)
    ov = resolve_overlap(tiles, overlap)
    for axis, (o, t, a) in enumerate(zip(ov, tiles, aligns)):
        if o < 0:
            raise ValueError(f"overlap must be >= 0, got {o} on axis {axis}")
        if o >= t:
            raise ValueError(f"overlap {o} must be smaller than the tile side {t} on axis {axis}")
        if t % a:
            raise ValueError(f"tile side {t} on axis {axis} is not a multiple of align {a}")
    pads, modes, starts = [], [], []
    for axis, (s, t, o, a) in enumerate(zip(shape, tiles, ov, aligns)):
        padded = max(t, -(-s // a) * a)
        if padded > t and t - o < a:
            raise ValueError(
                f"tile side {t} minus overlap {o} on axis {axis} leaves a step smaller than align {a}"
            )
        total = padded - s
        before, after = total // 2, total - total // 2
        pads.append((before, after))
        modes.append(_pad_mode_for(s, before, after, pad_mode) if total else pad_mode)
        if padded == t:
            starts.append((0,))
            continue
        k_max = (padded - t) // a
        count = -(-k_max // ((t - o) // a)) + 1
        starts.append(tuple(a * (k * k_max // (count - 1)) for k in range(count)))
    return TilePlan(shape, tiles, ov, tuple(pads), tuple(modes), tuple(starts))


def _profile(t: int, o: int, kind: str, low: bool = True, high: bool = True) -> np.ndarray:
    """1-D weight profile of length ``t`` tapering over ``o`` voxels at the low/high end."""
    w = np.ones(t, dtype=np.float64)
    if kind == "uniform" or o == 0 or not (low or high):
        return w
    i = np.arange(t)
    # distance of each voxel centre from the nearer tapered tile border, in voxels (>= 0.5)
    d = np.full(t, np.inf)
    if low:
        d = np.minimum(d, i + 0.5)
    if high:
        d = np.minimum(d, t - i - 0.5)
    ramp = d < o
    if kind == "triangular":
        w[ramp] = d[ramp] / o
    elif kind == "gaussian":
        sigma = o / 5.0
        w[ramp] = np.exp(-0.5 * ((o - d[ramp]) / sigma) ** 2)
    else:
        raise ValueError(f"blend must be one of {BLEND_KINDS}, got {kind!r}")
    return w


def blend_weights(
    tile_shape: Sequence[int],
    overlap=None,
    kind: BlendKind = "gaussian",
    *,
    taper: Sequence[tuple[bool, bool]] | None = None,
) -> np.ndarray:
    """Blending weights of shape ``tile_shape`` (float32, strictly positive, max 1).

    Separable: the product over axes of a 1-D profile that is 1 in the tile interior and
    tapers towards each border over the overlap (``o`` voxels, see :func:`resolve_overlap`):

    * ``"gaussian"``: ``exp(-(o - d)^2 / (2 (o/5)^2))`` at distance ``d`` (voxel centres,
      ``d >= 0.5``) from the border, i.e. about ``e^-12.5 ≈ 4e-6`` at the border and
      ``e^-3.1 ≈ 0.044`` at half the overlap (where two neighbours weigh the same). The outermost
      voxels of a network tile are the worst (for a random fnet the error there is several
      output standard deviations), so their weight must be tiny where a neighbour overlaps;
    * ``"triangular"``: ``d / o`` (``0.5 / o`` at the border);
    * ``"uniform"``: 1 everywhere (plain averaging).

    ``taper``: per axis ``(low, high)``: whether to taper towards the low / high border
    (default: both). :func:`run_tiles` does not taper a tile side that lies on the volume's
    border: no neighbour overlaps there, and a taper would only shrink the tile's weight
    relative to a neighbour whose border it overlaps.

    Every weight is > 0, so a voxel covered by one tile only is still reproduced exactly.
    """
    tile_shape = tuple(int(t) for t in tile_shape)
    if kind not in BLEND_KINDS:
        raise ValueError(f"blend must be one of {BLEND_KINDS}, got {kind!r}")
    ov = resolve_overlap(tile_shape, overlap)
    if taper is None:
        taper = [(True, True)] * len(tile_shape)
    if len(taper) != len(tile_shape):
        raise ValueError(f"taper has {len(taper)} entries for {len(tile_shape)} axes")
    w = np.ones((), dtype=np.float64)
    for t, o, (low, high) in zip(tile_shape, ov, taper):
        if not 0 <= o < t:
            raise ValueError(f"overlap {o} must be in [0, tile side {t})")
        w = np.multiply.outer(w, _profile(t, o, kind, bool(low), bool(high)))
    w = w.astype(np.float32)
    if not np.all(w > 0):  # pragma: no cover - the profiles are >= exp(-12.5)^ndim or 0.5/o
        raise ValueError("blending weights underflowed to 0")
    return w


def _tile_taper(plan: TilePlan, corner: Sequence[int]) -> tuple[tuple[bool, bool], ...]:
    """Taper a tile side only where it is not on the padded volume's border."""
    return tuple(
        (c > 0, c + t < p) for c, t, p in zip(corner, plan.tile_shape, plan.padded_shape)
    )


def pad_to_plan(x: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Pad ``x`` ``(C, *plan.shape)`` to ``(C, *plan.padded_shape)`` as the plan says.

    Returns ``x`` itself (no copy) when the plan has no padding.
    """
    if tuple(x.shape[1:]) != plan.shape:
        raise ValueError(f"array spatial shape {x.shape[1:]} does not match the plan's {plan.shape}")
    for axis, ((before, after), mode) in enumerate(zip(plan.pad, plan.pad_modes)):
        if before or after:
            widths = [(0, 0)] * x.ndim
            widths[axis + 1] = (before, after)
            x = np.pad(x, widths, mode=mode)
    return x


def tile_weights(plan: TilePlan, weights: np.ndarray | str | None) -> Callable[[tuple[int, ...]], np.ndarray]:
    """The blending weights of the tile starting at a corner (padded coordinates), as :func:`run_tiles`
    describes ``weights`` (one array per distinct taper, cached)."""
    if weights is None:
        weights = np.ones(plan.tile_shape, np.float32)
    if isinstance(weights, str):
        kind = weights
        if kind not in BLEND_KINDS:
            raise ValueError(f"blend must be one of {BLEND_KINDS}, got {kind!r}")
        cache: dict = {}

        def tapered(corner):
            key = _tile_taper(plan, corner)
            if key not in cache:
                cache[key] = blend_weights(plan.tile_shape, plan.overlap, kind, taper=key)
            return cache[key]

        return tapered
    fixed = np.asarray(weights, dtype=np.float32)
    if fixed.shape != plan.tile_shape:
        raise ValueError(f"weights shape {fixed.shape} != tile shape {plan.tile_shape}")
    if not np.all(fixed > 0):
        raise ValueError("blending weights must be strictly positive")
    return lambda corner: fixed


def run_tiles(
    fn: Callable,
    x: np.ndarray,
    plan: TilePlan,
    *,
    batch_size: int = 1,
    weights: np.ndarray | str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Apply ``fn`` tile by tile and blend: returns ``(C_out, *plan.shape)`` float32.

    Args:
        fn: maps a float32 ``(batch_size, C, *tile)`` array to ``(batch_size, C_out, *tile)``
            (numpy or jax array). It always receives exactly ``batch_size`` tiles (the last
            batch is filled up with copies of its first tile, whose outputs are discarded),
            so a jit-compiled ``fn`` compiles once.
        x: ``(C, *plan.shape)`` input.
        plan: from :func:`plan_tiles`.
        batch_size: tiles per call.
        weights: a blend kind (``"gaussian"``, ``"triangular"``, ``"uniform"``): per-tile
            :func:`blend_weights` over ``plan.overlap`` that do not taper on the volume's
            border; or one explicit ``plan.tile_shape`` array (strictly positive) used for every
            tile; None means uniform.
        progress: show a tqdm bar over batches.

    The result is ``sum_i w_i * out_i / sum_i w_i`` over the tiles covering each voxel,
    accumulated in float32.
    """
    x = np.asarray(x)
    if x.ndim != plan.ndim + 1:
        raise ValueError(f"expected a (C, *{plan.ndim} spatial axes) array, got shape {x.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    weights_for = tile_weights(plan, weights)
    xp = pad_to_plan(x, plan)
    c_in = xp.shape[0]
    slices = list(plan.tile_slices())  # small: n_tiles tuples of slices, no array data
    n_batches = math.ceil(len(slices) / batch_size)
    acc: np.ndarray | None = None
    wsum = np.zeros(plan.padded_shape, np.float32)

    def accumulate(out, batch_slices):
        nonlocal acc
        out = np.asarray(out)
        if out.ndim != plan.ndim + 2 or out.shape[0] != batch_size or out.shape[2:] != plan.tile_shape:
            raise ValueError(
                f"fn returned shape {out.shape} for a {(batch_size, c_in) + plan.tile_shape} batch; "
                f"expected ({batch_size}, C_out, *{plan.tile_shape})"
            )
        if acc is None:
            acc = np.zeros((out.shape[1],) + plan.padded_shape, np.float32)
        elif out.shape[1] != acc.shape[0]:
            raise ValueError(f"fn returned {out.shape[1]} channels, earlier batches had {acc.shape[0]}")
        for j, sl in enumerate(batch_slices):
            w = weights_for(tuple(s.start for s in sl))
            acc[(slice(None),) + sl] += out[j].astype(np.float32, copy=False) * w
            wsum[sl] += w

    pending = None  # (output of fn, slices) not yet accumulated
    with tqdm(total=len(slices), desc="tiles", unit="tile", disable=not progress, leave=False) as bar:
        for b in range(n_batches):
            batch_slices = slices[b * batch_size : (b + 1) * batch_size]
            batch = np.empty((batch_size, c_in) + plan.tile_shape, np.float32)
            for j, sl in enumerate(batch_slices):
                batch[j] = xp[(slice(None),) + sl]
            batch[len(batch_slices) :] = batch[0]
            out = fn(batch)  # asynchronous on JAX backends
            if pending is not None:
                accumulate(*pending)
                bar.update(len(pending[1]))
            pending = (out, batch_slices)
        if pending is not None:
            accumulate(*pending)
            bar.update(len(pending[1]))
    assert acc is not None
    crop = plan.crop
    acc = acc[(slice(None),) + crop]
    acc /= wsum[crop]
    return acc


def predict_tiled(
    fn: Callable,
    x: np.ndarray,
    *,
    tile_shape: Sequence[int] | int,
    overlap=None,
    batch_size: int = 1,
    blend: BlendKind = "gaussian",
    pad_mode: PadMode = "reflect",
    align: int | Sequence[int] = 1,
    progress: bool = True,
) -> np.ndarray:
    """Plan, run and blend in one call: ``x`` ``(C, *spatial)`` -> ``(C_out, *spatial)`` float32.

    See :func:`plan_tiles` (``tile_shape``, ``overlap``, ``pad_mode``, ``align``), :func:`blend_weights`
    (``blend``; tile sides on the volume border are not tapered) and :func:`run_tiles` (``fn``,
    ``batch_size``, ``progress``).
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"expected a (C, *spatial) array, got shape {x.shape}")
    plan = plan_tiles(x.shape[1:], tile_shape, overlap, pad_mode=pad_mode, align=align)
    log.debug("tiling %s into %d tiles %s (grid %s)", x.shape, plan.n_tiles, plan.tile_shape, plan.grid)
    return run_tiles(fn, x, plan, batch_size=batch_size, weights=blend, progress=progress)
