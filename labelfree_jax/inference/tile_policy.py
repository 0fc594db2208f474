"""Tile policy: the tile size, the overlap, the memory a forward pass needs and the devices it runs on.

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

Architectures. Each network config declares its alignment multiple (``size_multiple``,
``2**depth`` for both families: tile sides and starts are multiples of it) and its receptive
radius (``receptive_radius()``, :func:`halo`): a tile's output equals the whole-volume output
at every voxel at least that far from the tile's cut sides. Given a ``halo``, the default
overlap covers it on both sides of a seam (``max(64, 2 * halo)``, capped as above), and
:func:`seam_weights` gives blending weights under which tiled prediction equals whole-volume
prediction to float rounding (the ConvNeXt U-Net normalises per voxel, so this is exact for
it; fnet's BatchNorm in eval mode is per voxel too). The memory factor ``k`` is per
architecture (the ConvNeXt U-Net holds its 4x MLP and the depthwise convolution's shifted
sums: measured 36-44 on CPU, 48 used).

Devices. With several local devices the batch of tiles is sharded over them
(:func:`shard_over_devices`); an accelerator out-of-memory error is recognised by
:func:`is_out_of_memory` so that the caller can retry with :func:`halve_largest` tiles.

All sizes are in voxels of the network's working grid; tile shapes are ``(Z, Y, X)`` or ``(Y, X)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.tiling import resolve_overlap

__all__ = [
    "DEFAULT_MAX_OVERLAP",
    "choose_tile_shape",
    "default_memory_budget",
    "default_overlap",
    "estimate_memory_bytes",
    "halo",
    "halve_largest",
    "is_out_of_memory",
    "network_of",
    "resolve_tile_overlap",
    "seam_weights",
    "shard_over_devices",
    "size_multiple",
]

log = logging.getLogger(__name__)

#: Largest default overlap per axis (voxels): tile seams then sit >= 32 voxels inside both tiles.
DEFAULT_MAX_OVERLAP = 64

_MEMORY_MARGIN = 1.25

#: Activation floats per voxel and first-level channel (see :func:`estimate_memory_bytes`).
_ACTIVATION_FACTOR_NATIVE = 4
_ACTIVATION_FACTOR_CPU_3D = 10
#: The ConvNeXt U-Net (``architecture: "unext"``), any backend: XLA CPU buffer assignment measured
#: 44 (2D) and 36 (3D) floats per voxel and first-level channel (scripts: see docstring above).
_ACTIVATION_FACTOR_UNEXT = 48

#: Relative weight of a tile's outputs within its halo under :func:`seam_weights` (per axis).
SEAM_EPSILON = 1e-9


# --------------------------------------------------------------------------------------------
# the network's geometry
# --------------------------------------------------------------------------------------------
def network_of(model) -> Any:
    """``model.config.network`` (a :class:`~labelfree_jax.models.config.NetworkConfig`).

    Raises:
        TypeError: ``model`` has no ``config.network`` (not a labelfree_jax model).
    """
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


def size_multiple(network) -> int:
    """The network's alignment multiple (``2**depth``): every tile side (voxels) is a multiple of
    it, and so is every tile start."""
    declared = getattr(network, "size_multiple", None)
    return int(declared) if declared is not None else int(2 ** int(network.depth))


def halo(network) -> tuple[int, ...]:
    """Receptive radius of the network per spatial axis (voxels, ``(Z, Y, X)`` or ``(Y, X)``).

    A tile's output is exact (equal to the whole-volume output, tiles aligned to
    :func:`size_multiple`) at voxels at least this far from its cut sides
    (``NetworkConfig.receptive_radius``; fnet depth 4: 108, unext: see its config).
    """
    declared = getattr(network, "receptive_radius", None)
    if declared is not None:
        return tuple(int(r) for r in declared())
    depth = int(network.depth)  # an fnet-like object without the method: the fnet closed form
    r = sum(2 * 2**level for level in range(depth + 1)) + sum(3 * 2**level for level in range(depth)) + 1
    return (r,) * int(network.ndim)


def _round_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
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
    (measured 8.1-10.7); ``k = 48`` for the ConvNeXt U-Net (``architecture: "unext"``).
    ``2 (C_in + C_out)``: input and output, host and device copies; 25 %
    margin for backend workspace (cuDNN) and fragmentation.
    """
    v = math.prod(int(t) for t in tile_shape)
    backend = backend or jax.default_backend()
    if getattr(network, "architecture", "fnet") == "unext":
        k = _ACTIVATION_FACTOR_UNEXT
    elif backend == "cpu" and len(tuple(tile_shape)) == 3:
        k = _ACTIVATION_FACTOR_CPU_3D
    else:
        k = _ACTIVATION_FACTOR_NATIVE
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
    except Exception as err:  # noqa: BLE001  # pragma: no cover - depends on the backend
        log.debug("no device memory statistics: %s", err)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    return int(min(ram // 4, 4 * 2**30))


# --------------------------------------------------------------------------------------------
# tile shape
# --------------------------------------------------------------------------------------------
def halve_largest(tile: Sequence[int], m: int) -> tuple[int, ...] | None:
    """``tile`` with its longest side halved (rounded up to a multiple of ``m``); None if all are ``m``."""
    tile = list(tile)
    order = sorted(range(len(tile)), key=lambda i: -tile[i])
    for i in order:
        if tile[i] > m:
            tile[i] = max(m, _round_up(tile[i] // 2, m))
            return tuple(tile)
    return None


def _round_given_tile(tile_shape: Sequence[int], full: tuple[int, ...], m: int) -> tuple[int, ...]:
    """A requested tile rounded down to multiples of ``m`` (at least ``m``), at most ``full``."""
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
    return tile


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

    Raises:
        InputError: ``tile_shape`` has the wrong number of sides or a side < 1.
    """
    m = size_multiple(network)
    full = tuple(_round_up(s, m) for s in spatial_shape)
    if tile_shape is not None:
        tile = _round_given_tile(tile_shape, full, m)
        if max_memory_bytes is None:
            return tile
        budget = int(max_memory_bytes)
    else:
        tile = full
        budget = int(max_memory_bytes) if max_memory_bytes is not None else default_memory_budget()
    while estimate_memory_bytes(network, tile, batch_size) > budget:
        smaller = halve_largest(tile, m)
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


# --------------------------------------------------------------------------------------------
# overlap
# --------------------------------------------------------------------------------------------
def default_overlap(
    tile_shape: Sequence[int], spatial_shape: Sequence[int], size_multiple: int, halo: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Default overlap per axis (voxels): ``min(64, tile // 2, tile - size_multiple)``.

    With a ``halo`` (per axis, :func:`halo`): ``min(max(64, 2 * halo), tile // 2, tile -
    size_multiple)``, so that the seam halfway through the overlap is a halo inside both tiles
    when the tile allows. 0 where one tile covers the axis. (``tile - size_multiple`` keeps at
    least one aligned step between tile starts.)
    """
    halos = tuple(halo) if halo is not None else (0,) * len(tuple(tile_shape))
    out = []
    for t, s, h in zip(tile_shape, spatial_shape, halos):
        if t >= _round_up(s, size_multiple):
            out.append(0)
        else:
            out.append(min(max(DEFAULT_MAX_OVERLAP, 2 * int(h)), t // 2, t - size_multiple))
    return tuple(out)


def seam_weights(tile_shape: Sequence[int], halo: Sequence[int], epsilon: float = SEAM_EPSILON) -> np.ndarray:
    """Blending weights (float32, tile shape) that keep only each tile's exact interior.

    1 at voxels at least ``halo`` (per axis) inside every side, ``epsilon`` per axis closer
    (a product over axes, so > 0 as :func:`~labelfree_jax.inference.tiling.run_tiles` requires).
    Used as ``run_tiles(..., weights=seam_weights(tile, halo(net)))`` with an overlap of at
    least ``2 * halo + 1`` on every tiled axis, each voxel is dominated by a tile in which it is
    exact, so the tiled output equals the whole-volume output to float rounding -- provided no
    cut tile side lies within ``halo`` of the volume's border (second tile start >= halo, and
    likewise at the far end): one array serves every tile, so it also damps sides on the
    volume border, which is harmless only where every tile covering a voxel is damped alike.

    Raises:
        ValueError: ``halo`` has the wrong number of axes or a negative entry.
    """
    tile_shape = tuple(int(t) for t in tile_shape)
    halos = tuple(int(h) for h in halo)
    if len(halos) != len(tile_shape) or min(halos, default=0) < 0:
        raise ValueError(f"halo {halos} must be one non-negative number per tile axis {tile_shape}")
    w = np.ones((), np.float64)
    for t, h in zip(tile_shape, halos):
        i = np.arange(t)
        inside = (i >= h) & (i < t - h)
        w = np.multiply.outer(w, np.where(inside, 1.0, float(epsilon)))
    return w.astype(np.float32)


def resolve_tile_overlap(
    overlap, tile: tuple[int, ...], spatial: tuple[int, ...], m: int, *, halo: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The overlap (voxels per axis) to tile a ``spatial`` working volume with ``tile`` tiles.

    ``overlap``: None (:func:`default_overlap`, given ``halo``), or voxels / tile fractions as
    :func:`labelfree_jax.inference.tiling.resolve_overlap` takes them. An axis covered by one
    tile gets 0; an overlap above ``tile - m`` is lowered to it (with a warning).

    Raises:
        InputError: ``overlap`` is not voxels or a fraction in [0, 1), or has the wrong length.
    """
    if overlap is None:
        return default_overlap(tile, spatial, m, halo)
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
# devices
# --------------------------------------------------------------------------------------------
def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error (XLA ``RESOURCE_EXHAUSTED``)."""
    classes = tuple(
        c for c in (getattr(jax.errors, "JaxRuntimeError", None), getattr(jax.errors, "XlaRuntimeError", None)) if c
    )
    return isinstance(err, classes) and "RESOURCE_EXHAUSTED" in str(err)


def shard_over_devices(fn: Callable, batch_size: int) -> tuple[Callable, int]:
    """Shard the batch axis over the local devices when there are several.

    ``fn`` maps ``(B, C_in, *tile)`` to ``(B, C_out, *tile)``. Returns the wrapped function and
    ``batch_size`` rounded up to a multiple of the device count (``fn`` itself and
    ``batch_size`` unchanged with one device).
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
