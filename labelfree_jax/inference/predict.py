"""Prediction of one array: signal transforms -> tiled network -> inverse geometric transforms.

:func:`predict_array` predicts one image of any size with a :class:`~labelfree_jax.inference.model.Model`
(or any object with ``config``, ``ndim`` and ``forward_fn()``):

1. the input ``(C, Z, Y, X)`` / ``(Z, Y, X)`` (3D model) or ``(C, Y, X)`` / ``(Y, X)`` (2D model)
   is checked (dimensions, channel count, NaN/Inf) and converted to float32;
2. the model's ``signal_transforms`` (normalisation, resizing, padding ...) map it onto the
   network's *working grid*, the resize adapted to the input's pixel sizes by the rule training
   uses too (:func:`labelfree_jax.transforms.pixel_size.resolve_resize`: input pixel size -> the
   package's working pixel size ``pixel_size_um``; a fixed zoom is only the fallback, with a
   warning naming the input pixel size it assumes);
3. the network runs tile by tile (:mod:`labelfree_jax.inference.tiling`) with tile starts aligned to
   ``2**depth`` voxels, so the interior of every tile equals the whole-volume output, and the
   tiles are blended with Gaussian-tapered weights; the tile size and overlap are chosen by
   :mod:`labelfree_jax.inference.tile_policy` (see there for the memory estimate and the
   measured seam errors behind the default overlap);
4. the geometric transforms are inverted (intensity transforms are not: the prediction is
   in the units of the training targets), so the result lies on the input grid:
   ``(C_out, *input_spatial)`` float32; a prediction with NaN/Inf is refused.

Every assumption made on the way (:mod:`labelfree_jax.inference.checks`,
:func:`~labelfree_jax.transforms.pixel_size.resolve_resize`) is a warning: logged, or handed to the caller.

Memory during prediction: the input and its padded working copy, two float32 accumulators of
the output size and at most two batches of tiles; it does not grow with the number of tiles.

Batches of files (``predict_files``, ``summary.csv``, shards) are in
:mod:`labelfree_jax.inference.batch`; their names, and those of the tile policy, can still be
imported from this module.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.checks import check_size, input_warnings
from labelfree_jax.inference.tile_policy import (
    choose_tile_shape,
    halve_largest,
    is_out_of_memory,
    network_of,
    resolve_tile_overlap,
    shard_over_devices,
    size_multiple,
)
from labelfree_jax.inference.tiling import BLEND_KINDS, predict_tiled
from labelfree_jax.transforms import Pipeline, validate_image_array
from labelfree_jax.transforms.base import spatial_names
from labelfree_jax.transforms.pixel_size import resolve_resize

__all__ = ["predict_array"]

log = logging.getLogger(__name__)

#: Names that lived in this module before the split -> their module now (still importable from here).
_MOVED = {
    **dict.fromkeys(
        ("estimate_memory_bytes", "default_memory_budget", "choose_tile_shape", "default_overlap",
         "DEFAULT_MAX_OVERLAP"),
        "labelfree_jax.inference.tile_policy",
    ),
    **dict.fromkeys(
        ("predict_files", "merge_summaries", "PredictionRecord", "SUMMARY_COLUMNS", "expand_inputs",
         "shard_items", "resolve_shard", "summary_path", "prediction_path"),
        "labelfree_jax.inference.batch",
    ),
}


def __getattr__(name: str) -> Any:
    # batch imports this module, so its names are resolved on first use, not at import
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tta_flips(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip, one tuple per TTA pass: ``[()]`` without TTA, all ``2**ndim`` subsets with."""
    if not tta:
        return [()]
    return [tuple(a for a, f in zip(range(ndim), flags) if f) for flags in itertools.product((False, True), repeat=ndim)]


def _check_input(model, x) -> np.ndarray:
    """``x`` as a validated float32 ``(C, *spatial)`` array for ``model`` (a C axis is added if missing)."""
    net = network_of(model)
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


def _tiled_with_flips(
    fn: Callable, work: np.ndarray, tile: tuple[int, ...], ov: tuple[int, ...], flips: list[tuple[int, ...]], *,
    batch_size: int, blend: str, m: int, progress: bool,
) -> np.ndarray:
    """Tiled network output on the working grid, averaged over the ``flips`` (float32 ``(C_out, *spatial)``)."""
    acc = None
    for axes in flips:
        src = np.ascontiguousarray(np.flip(work, tuple(a + 1 for a in axes))) if axes else work
        y = predict_tiled(
            fn, src, tile_shape=tile, overlap=ov, batch_size=batch_size, blend=blend, align=m, progress=progress,
        )
        if axes:
            y = np.flip(y, tuple(a + 1 for a in axes))
        acc = y if acc is None else acc + y
    assert acc is not None
    return (acc / len(flips)).astype(np.float32, copy=False) if len(flips) > 1 else acc


def _predict_working_grid(
    fn: Callable, work: np.ndarray, tile: tuple[int, ...], overlap, flips: list[tuple[int, ...]], *,
    m: int, batch_size: int, blend: str, progress: bool, input_spatial: tuple[int, ...],
) -> np.ndarray:
    """:func:`_tiled_with_flips`, retried with the tile's longest side halved on out-of-memory errors."""
    spatial = tuple(work.shape[1:])
    while True:
        ov = resolve_tile_overlap(overlap, tile, spatial, m)
        log.info(
            "predicting %s (working grid %s) with tiles %s, overlap %s, batch %d%s",
            input_spatial, spatial, tile, ov, batch_size, f", TTA x{len(flips)}" if len(flips) > 1 else "",
        )
        try:
            return _tiled_with_flips(fn, work, tile, ov, flips, batch_size=batch_size, blend=blend, m=m,
                                     progress=progress)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            smaller = halve_largest(tile, m)
            if smaller is None:
                raise
            log.warning("out of accelerator memory with tile %s; retrying with %s", tile, smaller)
            tile = smaller


def _working_pipeline(config, spatial: tuple[int, ...], pixel_sizes) -> tuple[Pipeline, list[str]]:
    """The signal pipeline for this input (resize from its pixel sizes) and the assumptions made."""
    working = dict(getattr(config, "pixel_size_um", None) or {})
    names = spatial_names(len(spatial))
    sizes = {k: v for k, v in (pixel_sizes or {}).items() if k in names and v is not None}
    for axis, side in zip(names, spatial):
        if side == 1 and axis in working:
            sizes[axis] = working[axis]  # a single plane: nothing to resample, nothing to assume
    steps, found = resolve_resize(
        tuple(getattr(config, "signal_transforms", ()) or ()), working or None, sizes or None, n_spatial=len(spatial)
    )
    return Pipeline(steps=tuple(steps)), list(found)


def _report(found: list[str], warnings: list[str] | None) -> None:
    """Hand the warnings to the caller's list, or log them when there is none."""
    if warnings is not None:
        warnings.extend(found)
        return
    for message in found:
        log.warning("%s", message)


def _check_finite(y: np.ndarray) -> None:
    _check_finite_count(int(y.size - np.count_nonzero(np.isfinite(y))), y.size)


def _check_finite_count(bad: int, size: int) -> None:
    """Refuse a prediction with ``bad`` non-finite values of ``size`` (InputError; nothing is written)."""
    if bad:
        raise InputError(
            f"the prediction has {bad} non-finite value(s) (NaN/Inf) of {size}; nothing written for this image "
            "(extreme input values, or weights that overflow?)"
        )


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
    warnings: list[str] | None = None,
):
    """Predict the target for one image of any size.

    Args:
        model: a :class:`~labelfree_jax.inference.model.Model` (``config``, ``ndim``, ``forward_fn()``).
        x: ``(C, Z, Y, X)`` or ``(Z, Y, X)`` for a 3D model, ``(C, Y, X)`` or ``(Y, X)`` for a
            2D model (without C, one channel is assumed); any real dtype, raw file units;
            ``C`` must equal the network's input channels.
        tile_shape: spatial tile (voxels, on the working grid); default: the model config's
            ``prediction.tile_shape``, else chosen from the memory budget
            (:func:`~labelfree_jax.inference.tile_policy.choose_tile_shape`).
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
        pixel_sizes: µm per pixel of ``x`` (keys among ``"z"``, ``"y"``, ``"x"``; others
            ignored). The input is resampled from them to the package's working pixel size
            ``config.pixel_size_um`` and the prediction back to the input grid (see
            :func:`~labelfree_jax.transforms.pixel_size.resolve_resize`, which also says what
            is assumed when either is unknown). An axis of one pixel (a single z-plane) is
            never resampled.
        max_memory_bytes: memory budget for choosing (or shrinking) the tile.
        progress: tqdm bars.
        warnings: a list to append the warnings to (assumptions made for this input: unknown
            pixel size, a single z-plane for a 3D model, an axis shorter than ``2**depth``, no
            normalisation, intensities far from the training signal's; see
            :mod:`~labelfree_jax.inference.checks`); the caller then reports them. None: each
            is logged at WARNING.

    Returns:
        ``(C_out, *spatial of x)`` float32; with ``return_working_grid`` the tuple
        ``(prediction, prediction_on_working_grid)``.

    Raises:
        InputError: wrong dimensions or channel count, NaN/Inf, empty axes, Y or X under 2
            pixels, bad tile/overlap, or a prediction with NaN/Inf values.

    On an accelerator out-of-memory error the tile's longest side is halved and the
    prediction retried (down to ``2**depth`` voxels), with a warning.
    """
    net = network_of(model)
    nd = int(getattr(model, "ndim", net.ndim))
    defaults = getattr(model.config, "prediction", None)
    if blend is None:
        blend = getattr(defaults, "blend", None) or "gaussian"
    if blend not in BLEND_KINDS:
        raise InputError(f"blend must be one of {BLEND_KINDS}, got {blend!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    arr = _check_input(model, x)
    check_size(arr.shape)
    input_spatial = tuple(arr.shape[1:])
    pipeline, found = _working_pipeline(model.config, input_spatial, pixel_sizes)
    _report(input_warnings(model.config, arr, nd) + found, warnings)
    work, state = pipeline.apply(arr, pixel_sizes=pixel_sizes)
    if tile_shape is None:
        tile_shape = getattr(defaults, "tile_shape", None)
    if overlap is None:
        overlap = getattr(defaults, "overlap", None)
    fn, batch_size = shard_over_devices(model.forward_fn(), int(batch_size))
    tile = choose_tile_shape(
        net, tuple(work.shape[1:]), tile_shape=tile_shape, max_memory_bytes=max_memory_bytes, batch_size=batch_size
    )
    y_work = _predict_working_grid(
        fn, work, tile, overlap, _tta_flips(nd, tta), m=size_multiple(net), batch_size=batch_size, blend=blend,
        progress=progress, input_spatial=input_spatial,
    )
    y = pipeline.invert(y_work, state, geometric_only=True)
    if tuple(y.shape[1:]) != input_spatial:  # pragma: no cover - guarded by the transforms' own tests
        raise RuntimeError(f"inverse transforms gave spatial shape {y.shape[1:]}, expected {input_spatial}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    _check_finite(y)
    return (y, y_work) if return_working_grid else y
