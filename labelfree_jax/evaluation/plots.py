"""Figures of label-free predictions: projections, comparisons, differences, Otsu binaries, grids.

Headless and side-effect free: figures are built on :class:`matplotlib.figure.Figure` with the
Agg canvas directly (:mod:`labelfree_jax.evaluation.canvas`) -- ``matplotlib.pyplot`` (and its
global figure registry) is never touched -- and every function writes its PNG atomically,
clears its figure and returns the written :class:`~pathlib.Path`.

The arrays' layout (``spatial_dims``), the orthogonal views of 3D volumes (``projection``,
``pixel_sizes``) and the percentile clipping (``clip_percentiles``) are described in
:mod:`labelfree_jax.evaluation.views`.

The observed/predicted toggle GIF is :func:`labelfree_jax.evaluation.gif.write_toggle_gif`, the
loss curve :func:`labelfree_jax.evaluation.figures_training.plot_loss_curve`; both, and the
array helpers of :mod:`~labelfree_jax.evaluation.views`, can still be imported from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.canvas import channel_suffix, gray_cmap, image_grid, save_png, show
from labelfree_jax.evaluation.figures_training import plot_loss_curve
from labelfree_jax.evaluation.gif import write_toggle_gif
from labelfree_jax.evaluation.metrics import dice, iou, otsu_binary
from labelfree_jax.evaluation.views import (
    DEFAULT_CLIP,
    VIEW_GAP,
    as_czyx,
    clip01,
    max_projection,
    orthogonal_views,
    same_channels,
    same_spatial,
    z_scale,
)

__all__ = [
    "as_czyx",
    "max_projection",
    "orthogonal_views",
    "plot_difference_maps",
    "plot_loss_curve",
    "plot_masked_observed",
    "plot_max_projections",
    "plot_observed_vs_predicted",
    "plot_otsu_binaries",
    "plot_prediction_grid",
    "write_toggle_gif",
]

_BINARY_GAP = "#3050b0"  # gap colour in binary panels, where white means foreground
_BINARY_GAP_RGB = (0.19, 0.31, 0.69)


def _empty_corner(view_shape: tuple[int, ...], volume_shape: tuple[int, ...]) -> np.ndarray:
    """True on the empty corner of an :func:`orthogonal_views` composite (below the YZ view, right of XZ)."""
    corner = np.zeros(view_shape[:2], bool)
    if len(volume_shape) == 3 and tuple(view_shape[:2]) != tuple(volume_shape[1:]):
        y, x = volume_shape[1:]
        corner[y + VIEW_GAP:, x + VIEW_GAP:] = True
    return corner


def _binary_rgba(rgb: np.ndarray, gaps: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """RGBA of a binary panel: gaps between views blue, the empty corner transparent."""
    rgba = np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], axis=-1)
    rgba[gaps & ~corner, :3] = _BINARY_GAP_RGB
    rgba[corner] = (1.0, 1.0, 1.0, 0.0)
    return rgba


def _observed_and_predicted(target: Any, prediction: Any, spatial_dims: int | None,
                            what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as ``(C, Z, Y, X)``, checked to share their spatial shape and channel count."""
    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    same_spatial(("target", t), ("prediction", p))
    same_channels(t, p, what)
    return t, p


def _view(vol: np.ndarray, projection: str, zs: int) -> np.ndarray:
    return orthogonal_views(vol, projection=projection, z_scale=zs)


def plot_max_projections(
    images: Mapping[str, Any],
    path: str | Path,
    *,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Maximum projections of several images, one row per image, one column per channel.

    ``images``: name -> array (layout: see the module docstring). Each channel is clipped to its
    own ``clip_percentiles``; 3D channels show the XY projection with the YZ and XZ side
    projections (:func:`orthogonal_views`). Writes a PNG to ``path``.
    """
    if not images:
        raise InputError("plot_max_projections: no images given")
    arrays = {name: as_czyx(a, spatial_dims, name) for name, a in images.items()}
    zs = z_scale(pixel_sizes)
    views = {name: [_view(clip01(a[c], clip_percentiles), "max", zs) for c in range(a.shape[0])]
             for name, a in arrays.items()}
    ncols = max(len(v) for v in views.values())
    first = next(iter(views.values()))[0]
    fig, axes = image_grid(len(views), ncols, first.shape)
    for r, (name, vs) in enumerate(views.items()):
        for c, img in enumerate(vs):
            show(axes[r, c], img, f"{name}{channel_suffix(c, len(vs))}")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_observed_vs_predicted(
    signal: Any,
    target: Any | None,
    prediction: Any,
    path: str | Path,
    *,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    projection: str = "max",
    signal_channel: int = 0,
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Signal | observed | predicted side by side, one row per predicted channel.

    ``target`` may be ``None`` (no observed column). Observed and predicted use ``projection``
    (``"max"`` or ``"slice"``); the transmitted-light ``signal`` (channel ``signal_channel``)
    always shows its middle orthogonal slices, since a maximum projection of transmitted light
    is uninformative. All images must share their spatial shape; target and prediction their
    channel count.
    """
    s = as_czyx(signal, spatial_dims, "signal")
    p = as_czyx(prediction, spatial_dims, "prediction")
    t = as_czyx(target, spatial_dims, "target") if target is not None else None
    same_spatial(("signal", s), ("target", t), ("prediction", p))
    if t is not None:
        same_channels(t, p, "plot_observed_vs_predicted")
    if not 0 <= signal_channel < s.shape[0]:
        raise InputError(f"signal_channel {signal_channel} out of range: signal has {s.shape[0]} channel(s)")
    zs = z_scale(pixel_sizes)
    sig = _view(clip01(s[signal_channel], clip_percentiles), "slice", zs)
    n = p.shape[0]
    cols = 2 if t is None else 3
    fig, axes = image_grid(n, cols, sig.shape)
    for c in range(n):
        show(axes[c, 0], sig, "signal" + (" (middle slices)" if s.shape[1] > 1 else ""))
        col = 1
        if t is not None:
            show(axes[c, col], _view(clip01(t[c], clip_percentiles), projection, zs), f"observed{channel_suffix(c, n)}")
            col += 1
        show(axes[c, col], _view(clip01(p[c], clip_percentiles), projection, zs), f"predicted{channel_suffix(c, n)}")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_difference_maps(
    target: Any,
    prediction: Any,
    path: str | Path,
    *,
    spatial_dims: int | None = None,
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """observed − predicted, predicted − observed and |observed − predicted| on one colour scale.

    One row per channel; 3D images show the middle orthogonal slices (a maximum projection of a
    signed difference would hide its negative half). All panels of the figure share one
    scale: the signed differences a symmetric diverging map on ``[-m, m]``, the absolute
    difference (never negative) a sequential map (magma) on ``[0, m]``, ``m`` = the 99.8th
    percentile of the absolute differences shown (larger ones saturate; the colorbars' arrows
    say so). Intensity units are those of the inputs, which should therefore share units.
    """
    from matplotlib import colormaps

    t, p = _observed_and_predicted(target, prediction, spatial_dims, "plot_difference_maps")
    zs = z_scale(pixel_sizes)
    diffs = [_view(t[c] - p[c], "slice", zs) for c in range(t.shape[0])]
    shown = np.concatenate([np.abs(d[np.isfinite(d)]) for d in diffs])
    m = float(np.percentile(shown, 99.8))
    m = m if m > 0 else (float(shown.max()) or 1.0)
    signed = colormaps["RdBu_r"].with_extremes(bad="white")
    magnitude = colormaps["magma"].with_extremes(bad="white")
    n = len(diffs)
    fig, axes = image_grid(n, 3, diffs[0].shape)
    im_signed = im_abs = None
    for c, d in enumerate(diffs):
        suffix = channel_suffix(c, n)
        im_signed = show(axes[c, 0], d, f"observed − predicted{suffix}", cmap=signed, vmin=-m, vmax=m)
        show(axes[c, 1], -d, f"predicted − observed{suffix}", cmap=signed, vmin=-m, vmax=m)
        im_abs = show(axes[c, 2], np.abs(d), f"|observed − predicted|{suffix}", cmap=magnitude, vmin=0.0, vmax=m)
    fig.colorbar(im_signed, ax=axes[:, :2].ravel().tolist(), shrink=0.8, extend="both",
                 label="intensity difference", location="left")
    fig.colorbar(im_abs, ax=axes[:, 2].ravel().tolist(), shrink=0.8, extend="max", label="absolute difference")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_otsu_binaries(
    target: Any,
    prediction: Any,
    path: str | Path,
    *,
    spatial_dims: int | None = None,
    projection: str = "slice",
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Otsu foregrounds of observed and predicted (each its own threshold) and their overlap.

    One row per channel. Thresholds and the Dice / IoU in the titles are computed on the whole
    image or volume (:func:`labelfree_jax.evaluation.metrics.otsu_binary`); 3D binaries are shown as
    ``projection`` views -- by default the middle slices, since a maximum projection of a
    binary (foreground anywhere along the viewing axis) saturates on noisy volumes. Overlap
    colours: white = both, magenta = observed only, green = predicted only. In these panels
    white means foreground, so the thin gaps between the views are blue; the empty corner
    beside the side views is left blank (the figure's background), as in the other figures.
    """
    t, p = _observed_and_predicted(target, prediction, spatial_dims, "plot_otsu_binaries")
    zs = z_scale(pixel_sizes)
    n = t.shape[0]
    rows = []
    for c in range(n):
        bt, bp = otsu_binary(t[c]), otsu_binary(p[c])
        vt = _view(bt.astype(np.float32), projection, zs)
        vp = _view(bp.astype(np.float32), projection, zs)
        corner = _empty_corner(vt.shape, t.shape[1:])
        o, q = np.nan_to_num(vt) > 0.5, np.nan_to_num(vp) > 0.5
        rgb = np.zeros(vt.shape + (3,), np.float32)
        rgb[o & q] = (1.0, 1.0, 1.0)
        rgb[o & ~q] = (1.0, 0.0, 1.0)
        rgb[~o & q] = (0.0, 0.8, 0.0)
        panels = [_binary_rgba(np.stack([np.nan_to_num(v)] * 3, -1), np.isnan(v), corner) for v in (vt, vp)]
        rows.append((*panels, _binary_rgba(rgb, np.isnan(vt), corner), dice(bp, bt), iou(bp, bt)))
    fig, axes = image_grid(n, 3, rows[0][0].shape[:2])
    for c, (at, ap, rgba, d, j) in enumerate(rows):
        for col, (img, name) in enumerate(((at, "observed Otsu"), (ap, "predicted Otsu"))):
            axes[c, col].imshow(img, interpolation="nearest")
            axes[c, col].set_title(f"{name}{channel_suffix(c, n)}", fontsize=9)
        axes[c, 2].imshow(rgba, interpolation="nearest")
        axes[c, 2].set_title(f"overlap: Dice {d:.3f}, IoU {j:.3f}", fontsize=9)
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_masked_observed(
    target: Any,
    prediction: Any,
    path: str | Path,
    *,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    projection: str = "max",
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """The observed image masked by the predicted Otsu foreground: what the prediction "finds".

    Columns: observed, predicted Otsu mask, observed × mask (zero outside the mask); one row
    per channel. Masking is done on the full image/volume, then ``projection`` views are shown.
    """
    t, p = _observed_and_predicted(target, prediction, spatial_dims, "plot_masked_observed")
    zs = z_scale(pixel_sizes)
    n = t.shape[0]
    rows = []
    for c in range(n):
        obs = clip01(t[c], clip_percentiles)
        mask = otsu_binary(p[c])
        rows.append((
            _view(obs, projection, zs),
            _view(mask.astype(np.float32), projection, zs),
            _view(np.where(mask, obs, 0.0).astype(np.float32), projection, zs),
            float(mask.mean()),
        ))
    fig, axes = image_grid(n, 3, rows[0][0].shape)
    for c, (vo, vm, vmasked, frac) in enumerate(rows):
        show(axes[c, 0], vo, f"observed{channel_suffix(c, n)}")
        show(axes[c, 1], vm, f"predicted Otsu mask ({100 * frac:.1f}% of pixels)",
              cmap=gray_cmap(_BINARY_GAP))
        show(axes[c, 2], vmasked, "observed inside predicted mask")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)


def plot_prediction_grid(
    items: Sequence[tuple],
    path: str | Path,
    *,
    channel: int = 0,
    signal_channel: int = 0,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    projection: str = "max",
    pixel_sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """One model's predictions over many images: a row per image.

    ``items``: ``(name, signal, prediction)`` or ``(name, signal, prediction, observed)`` tuples
    (``observed`` may be ``None``). Columns: signal (middle slices of ``signal_channel``),
    prediction and, when any item has one, observed (both channel ``channel``, ``projection``
    views). Images in different rows may differ in shape.
    """
    if not items:
        raise InputError("plot_prediction_grid: no items given")
    rows = []
    for item in items:
        if len(item) not in (3, 4):
            raise InputError(
                f"plot_prediction_grid: each item is (name, signal, prediction[, observed]); got {len(item)} fields"
            )
        name, sig, pred = item[0], item[1], item[2]
        obs = item[3] if len(item) == 4 else None
        s = as_czyx(sig, spatial_dims, f"{name}: signal")
        p = as_czyx(pred, spatial_dims, f"{name}: prediction")
        o = as_czyx(obs, spatial_dims, f"{name}: observed") if obs is not None else None
        same_spatial(("signal", s), ("prediction", p), ("observed", o))
        for what, a, ch in (("signal", s, signal_channel), ("prediction", p, channel), ("observed", o, channel)):
            if a is not None and not 0 <= ch < a.shape[0]:
                raise InputError(f"{name}: channel {ch} out of range, {what} has {a.shape[0]} channel(s)")
        rows.append((str(name), s[signal_channel], p[channel], o[channel] if o is not None else None))
    zs = z_scale(pixel_sizes)
    with_obs = any(r[3] is not None for r in rows)
    ncols = 3 if with_obs else 2
    first = _view(clip01(rows[0][1], clip_percentiles), "slice", zs)
    fig, axes = image_grid(len(rows), ncols, first.shape)
    for r, (name, s, p, o) in enumerate(rows):
        show(axes[r, 0], _view(clip01(s, clip_percentiles), "slice", zs), f"{name}: signal")
        show(axes[r, 1], _view(clip01(p, clip_percentiles), projection, zs), f"{name}: predicted")
        if with_obs:
            if o is not None:
                show(axes[r, 2], _view(clip01(o, clip_percentiles), projection, zs), f"{name}: observed")
            else:
                axes[r, 2].set_title(f"{name}: no observed image", fontsize=9)
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi)
