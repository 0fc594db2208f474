"""Figures for label-free predictions: projections, comparisons, differences, binaries, GIFs.

Headless and side-effect free: figures are built on :class:`matplotlib.figure.Figure` with the
Agg canvas directly -- ``matplotlib.pyplot`` (and its global figure registry) is never touched
-- and every function writes its file atomically, clears its figure and returns the written
:class:`~pathlib.Path`.

Array layout (``spatial_dims`` argument of every function):

* ``None`` (default, the project convention: channel-first): a 4-D array is ``(C, Z, Y, X)``,
  a 3-D array is ``(C, Y, X)``, a 2-D array is one ``(Y, X)`` image.
* ``3``: the last three axes are ``(Z, Y, X)``; a 3-D array is one ``(Z, Y, X)`` volume.
* ``2``: the last two axes are ``(Y, X)``; a 3-D array is ``(C, Y, X)``.

3D volumes are shown as an orthogonal-view composite, as in the original pytorch_fnet notebook's
``show_img``: the XY view, with the YZ view to its right and the XZ view below it. A view is
either the maximum projection along the viewing axis (``projection="max"``) or the middle slice
(``projection="slice"``). ``pixel_sizes`` (micrometres, ``{"z", "y", "x"}``) stretch the Z axis
of side views to its physical size. Intensities are percentile-clipped per image and channel
(``clip_percentiles``, in percent) and shown in grey.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import atomic_path
from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.metrics import dice, iou, otsu_binary

__all__ = [
    "as_czyx",
    "max_projection",
    "orthogonal_views",
    "plot_max_projections",
    "plot_observed_vs_predicted",
    "plot_difference_maps",
    "write_toggle_gif",
    "plot_otsu_binaries",
    "plot_masked_observed",
    "plot_prediction_grid",
    "plot_loss_curve",
]

log = logging.getLogger(__name__)

DEFAULT_CLIP = (0.02, 99.8)
_AXIS_LETTERS = {"z": -3, "y": -2, "x": -1}
_STEP_COLUMNS = ("step", "num_iter", "iteration", "iter", "epoch")
_GAP = 2  # pixels between the views of a composite
_BINARY_GAP = "#3050b0"  # gap colour in binary panels, where white means foreground
_BINARY_GAP_RGB = (0.19, 0.31, 0.69)


# --------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------
def as_czyx(x: Any, spatial_dims: int | None = None, what: str = "image") -> np.ndarray:
    """``x`` as float32 ``(C, Z, Y, X)`` (Z = 1 for 2D images), per the module's layout rules.

    ``what`` names the array in error messages. Raises :class:`InputError` for other shapes,
    empty arrays, non-numeric dtypes and non-finite values.
    """
    a = np.asarray(x)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
    if spatial_dims not in (None, 2, 3):
        raise InputError(f"spatial_dims must be None, 2 or 3, got {spatial_dims!r}")
    nd = a.ndim
    if spatial_dims is None:
        spatial_dims = 3 if nd == 4 else 2
    # new axes that bring each accepted layout to (C, Z, Y, X); 2D images get a Z of 1
    leading = {(3, 3): (None,), (3, 4): (), (2, 2): (None, None), (2, 3): (slice(None), None)}
    if (spatial_dims, nd) in leading:
        a = a[leading[(spatial_dims, nd)]]
    else:
        raise InputError(
            f"{what}: shape {a.shape} is not (C, Z, Y, X), (C, Y, X), (Z, Y, X) or (Y, X) "
            f"(spatial_dims={spatial_dims})"
        )
    if a.size == 0:
        raise InputError(f"{what}: the array is empty (shape {a.shape})")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what}: contains NaN or infinite values")
    return a


def _same_spatial(*named: tuple[str, np.ndarray | None]) -> None:
    shapes = {name: a.shape[1:] for name, a in named if a is not None}
    if len(set(shapes.values())) > 1:
        raise InputError("images differ in spatial shape: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def _same_channels(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise InputError(f"{what}: observed has {a.shape[0]} channel(s), predicted {b.shape[0]}")


def _clip01(a: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Scale ``a`` so its ``percentiles`` (in %) map to 0 and 1, clipped to [0, 1]."""
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0 <= lo_p < hi_p <= 100:
        raise InputError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")
    lo, hi = np.percentile(a, [lo_p, hi_p])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _z_scale(pixel_sizes: Mapping[str, float] | None) -> int:
    """Integer stretch of the Z axis in side views: z pixel size over x pixel size."""
    if not pixel_sizes or "z" not in pixel_sizes or not pixel_sizes.get("x"):
        return 1
    ratio = float(pixel_sizes["z"]) / float(pixel_sizes["x"])
    return max(1, int(round(ratio))) if math.isfinite(ratio) else 1


def max_projection(x: Any, axis: int | str = "z") -> np.ndarray:
    """Maximum intensity projection of ``x`` along ``axis``.

    ``axis``: an integer axis, or ``"z"``, ``"y"``, ``"x"`` meaning the third-, second- and
    last axis (``(..., Z, Y, X)`` layout). Returns ``x`` with that axis removed, same dtype.
    """
    a = np.asarray(x)
    if isinstance(axis, str):
        if axis.lower() not in _AXIS_LETTERS:
            raise InputError(f"axis must be an integer or one of 'z', 'y', 'x', got {axis!r}")
        axis = _AXIS_LETTERS[axis.lower()]
    if not -a.ndim <= axis < a.ndim:
        raise InputError(f"axis {axis} is out of range for an array of shape {a.shape}")
    return np.max(a, axis=axis)


def orthogonal_views(volume: Any, *, projection: str = "max", z_scale: int = 1) -> np.ndarray:
    """One ``(Z, Y, X)`` volume as a 2-D composite: XY view, YZ view to the right, XZ below.

    ``projection``: ``"max"`` (maximum projections) or ``"slice"`` (middle slices). ``z_scale``
    repeats each Z row/column of the side views that many times (pixel-size aspect). The gaps
    and the empty corner are NaN. Shape ``(Y + g + Z*s, X + g + Z*s)`` with g = 2; a volume with
    Z = 1 is returned as its single ``(Y, X)`` plane.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise InputError(f"expected a (Z, Y, X) volume, got shape {v.shape}")
    if projection not in ("max", "slice"):
        raise InputError(f"projection must be 'max' or 'slice', got {projection!r}")
    z, y, x = v.shape
    if z == 1:
        return v[0]
    if projection == "max":
        xy, xz, zy = v.max(0), v.max(1), v.max(2)
    else:
        xy, xz, zy = v[z // 2], v[:, y // 2, :], v[:, :, x // 2]
    s = max(1, int(z_scale))
    xz = np.repeat(xz, s, axis=0)  # (Z*s, X)
    yz = np.repeat(zy, s, axis=0).T  # (Y, Z*s)
    zs = z * s
    out = np.full((y + _GAP + zs, x + _GAP + zs), np.nan, np.float32)
    out[:y, :x] = xy
    out[:y, x + _GAP:] = yz
    out[y + _GAP:, :x] = xz
    return out


def _view(vol: np.ndarray, projection: str, z_scale: int) -> np.ndarray:
    return orthogonal_views(vol, projection=projection, z_scale=z_scale)


# --------------------------------------------------------------------------------------------
# figure helpers
# --------------------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, panel_shape: tuple[int, int], *, panel_inches: float = 3.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = panel_shape
    aspect = h / max(w, 1)
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * aspect * nrows + 0.4 * nrows + 0.3),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _gray_cmap(gap: str = "white"):
    from matplotlib import colormaps

    return colormaps["gray"].with_extremes(bad=gap)


def _show(ax, img: np.ndarray, title: str, *, cmap=None, vmin=0.0, vmax=1.0):
    im = ax.imshow(img, cmap=cmap if cmap is not None else _gray_cmap(), vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return im


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        fig.clear()
    log.info("wrote %s", path)
    return path


def _ch(c: int, n: int) -> str:
    return f" ch{c}" if n > 1 else ""


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
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
    zs = _z_scale(pixel_sizes)
    views = {name: [_view(_clip01(a[c], clip_percentiles), "max", zs) for c in range(a.shape[0])]
             for name, a in arrays.items()}
    ncols = max(len(v) for v in views.values())
    first = next(iter(views.values()))[0]
    fig, axes = _figure(len(views), ncols, first.shape)
    for r, (name, vs) in enumerate(views.items()):
        for c, img in enumerate(vs):
            _show(axes[r, c], img, f"{name}{_ch(c, len(vs))}")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


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
    _same_spatial(("signal", s), ("target", t), ("prediction", p))
    if t is not None:
        _same_channels(t, p, "plot_observed_vs_predicted")
    if not 0 <= signal_channel < s.shape[0]:
        raise InputError(f"signal_channel {signal_channel} out of range: signal has {s.shape[0]} channel(s)")
    zs = _z_scale(pixel_sizes)
    sig = _view(_clip01(s[signal_channel], clip_percentiles), "slice", zs)
    n = p.shape[0]
    cols = 2 if t is None else 3
    fig, axes = _figure(n, cols, sig.shape)
    for c in range(n):
        _show(axes[c, 0], sig, "signal" + (" (middle slices)" if s.shape[1] > 1 else ""))
        col = 1
        if t is not None:
            _show(axes[c, col], _view(_clip01(t[c], clip_percentiles), projection, zs), f"observed{_ch(c, n)}")
            col += 1
        _show(axes[c, col], _view(_clip01(p[c], clip_percentiles), projection, zs), f"predicted{_ch(c, n)}")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


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
    symmetric diverging scale ``[-m, m]``, ``m`` = the 99.8th percentile of the absolute
    differences shown (larger ones saturate; the colorbar's arrows say so), with a single
    colorbar (intensity units of the inputs, which should therefore share units).
    """
    from matplotlib import colormaps

    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    _same_spatial(("target", t), ("prediction", p))
    _same_channels(t, p, "plot_difference_maps")
    zs = _z_scale(pixel_sizes)
    diffs = [_view(t[c] - p[c], "slice", zs) for c in range(t.shape[0])]
    shown = np.concatenate([np.abs(d[np.isfinite(d)]) for d in diffs])
    m = float(np.percentile(shown, 99.8))
    m = m if m > 0 else (float(shown.max()) or 1.0)
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    n = len(diffs)
    fig, axes = _figure(n, 3, diffs[0].shape)
    im = None
    for c, d in enumerate(diffs):
        for col, (img, name) in enumerate(
            ((d, "observed − predicted"), (-d, "predicted − observed"), (np.abs(d), "|observed − predicted|"))
        ):
            im = _show(axes[c, col], img, f"{name}{_ch(c, n)}", cmap=cmap, vmin=-m, vmax=m)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, extend="both", label="intensity difference")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _label_strip(width: int, text: str, height: int = 22):
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw.text((6, 3), text, fill=255, font=font)
    return strip


def write_toggle_gif(
    target: Any,
    prediction: Any,
    path: str | Path,
    *,
    duration_ms: int = 800,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    projection: str = "max",
    pixel_sizes: Mapping[str, float] | None = None,
    min_height: int = 256,
) -> Path:
    """A looping two-frame GIF that toggles between the observed and the predicted image.

    Each frame shows every channel side by side (views as in :func:`plot_max_projections`,
    each image clipped to its own percentiles), upscaled by an integer factor (nearest
    neighbour) to at least ``min_height`` pixels, with the label "observed" / "predicted" drawn
    in a strip above. ``duration_ms``: display time of each frame. Written with Pillow.
    """
    from PIL import Image

    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    _same_spatial(("target", t), ("prediction", p))
    _same_channels(t, p, "write_toggle_gif")
    if duration_ms <= 0:
        raise InputError(f"duration_ms must be positive, got {duration_ms}")
    zs = _z_scale(pixel_sizes)

    def panel(a: np.ndarray) -> np.ndarray:
        views = [_view(_clip01(a[c], clip_percentiles), projection, zs) for c in range(a.shape[0])]
        gap = np.full((views[0].shape[0], 4), np.nan, np.float32)
        row = np.concatenate([v if i == 0 else np.concatenate([gap, v], 1) for i, v in enumerate(views)], 1)
        return np.nan_to_num(row, nan=0.5)

    frames = []
    for label, a in (("observed", t), ("predicted", p)):
        img = panel(a)
        scale = max(1, math.ceil(min_height / img.shape[0]))
        img = np.kron(img, np.ones((scale, scale), np.float32))
        body = Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L")
        frame = Image.new("L", (body.width, body.height + 22), 0)
        frame.paste(_label_strip(body.width, label), (0, 0))
        frame.paste(body, (0, 22))
        frames.append(frame)
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(duration_ms), loop=0)
    log.info("wrote %s", path)
    return path


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
    colours: white = both, magenta = observed only, green = predicted only; the gaps between
    views are blue.
    """
    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    _same_spatial(("target", t), ("prediction", p))
    _same_channels(t, p, "plot_otsu_binaries")
    zs = _z_scale(pixel_sizes)
    n = t.shape[0]
    rows = []
    for c in range(n):
        bt, bp = otsu_binary(t[c]), otsu_binary(p[c])
        vt = _view(bt.astype(np.float32), projection, zs)
        vp = _view(bp.astype(np.float32), projection, zs)
        gap = np.isnan(vt)
        o, q = np.nan_to_num(vt) > 0.5, np.nan_to_num(vp) > 0.5
        rgb = np.zeros(vt.shape + (3,), np.float32)
        rgb[o & q] = (1.0, 1.0, 1.0)
        rgb[o & ~q] = (1.0, 0.0, 1.0)
        rgb[~o & q] = (0.0, 0.8, 0.0)
        rgb[gap] = _BINARY_GAP_RGB
        rows.append((vt, vp, rgb, dice(bp, bt), iou(bp, bt)))
    fig, axes = _figure(n, 3, rows[0][0].shape)
    for c, (vt, vp, rgb, d, j) in enumerate(rows):
        _show(axes[c, 0], vt, f"observed Otsu{_ch(c, n)}", cmap=_gray_cmap(_BINARY_GAP))
        _show(axes[c, 1], vp, f"predicted Otsu{_ch(c, n)}", cmap=_gray_cmap(_BINARY_GAP))
        axes[c, 2].imshow(rgb, interpolation="nearest")
        axes[c, 2].set_title(f"overlap: Dice {d:.3f}, IoU {j:.3f}", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


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
    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    _same_spatial(("target", t), ("prediction", p))
    _same_channels(t, p, "plot_masked_observed")
    zs = _z_scale(pixel_sizes)
    n = t.shape[0]
    rows = []
    for c in range(n):
        obs = _clip01(t[c], clip_percentiles)
        mask = otsu_binary(p[c])
        rows.append((
            _view(obs, projection, zs),
            _view(mask.astype(np.float32), projection, zs),
            _view(np.where(mask, obs, 0.0).astype(np.float32), projection, zs),
            float(mask.mean()),
        ))
    fig, axes = _figure(n, 3, rows[0][0].shape)
    for c, (vo, vm, vmasked, frac) in enumerate(rows):
        _show(axes[c, 0], vo, f"observed{_ch(c, n)}")
        _show(axes[c, 1], vm, f"predicted Otsu mask ({100 * frac:.1f}% of pixels)",
              cmap=_gray_cmap(_BINARY_GAP))
        _show(axes[c, 2], vmasked, "observed inside predicted mask")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


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
        _same_spatial(("signal", s), ("prediction", p), ("observed", o))
        for what, a, ch in (("signal", s, signal_channel), ("prediction", p, channel), ("observed", o, channel)):
            if a is not None and not 0 <= ch < a.shape[0]:
                raise InputError(f"{name}: channel {ch} out of range, {what} has {a.shape[0]} channel(s)")
        rows.append((str(name), s[signal_channel], p[channel], o[channel] if o is not None else None))
    zs = _z_scale(pixel_sizes)
    with_obs = any(r[3] is not None for r in rows)
    ncols = 3 if with_obs else 2
    first = _view(_clip01(rows[0][1], clip_percentiles), "slice", zs)
    fig, axes = _figure(len(rows), ncols, first.shape)
    for r, (name, s, p, o) in enumerate(rows):
        _show(axes[r, 0], _view(_clip01(s, clip_percentiles), "slice", zs), f"{name}: signal")
        _show(axes[r, 1], _view(_clip01(p, clip_percentiles), projection, zs), f"{name}: predicted")
        if with_obs:
            if o is not None:
                _show(axes[r, 2], _view(_clip01(o, clip_percentiles), projection, zs), f"{name}: observed")
            else:
                axes[r, 2].set_title(f"{name}: no observed image", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _read_loss_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Series from a loss CSV: a header row, one step column, one column per loss series."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise InputError(f"{path}: cannot read the loss CSV ({err})") from err
    if len(rows) < 2:
        raise InputError(f"{path}: the loss CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    step_col = next((lower.index(c) for c in _STEP_COLUMNS if c in lower), 0)

    def num(cell: str) -> float | None:
        try:
            v = float(cell)
        except ValueError:
            return None
        return v if math.isfinite(v) else None

    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for col, name in enumerate(header):
        if col == step_col:
            continue
        steps, vals = [], []
        for i, row in enumerate(rows[1:]):
            if col >= len(row):
                continue
            v = num(row[col])
            s = num(row[step_col]) if step_col < len(row) else None
            if v is not None:
                steps.append(s if s is not None else float(i))
                vals.append(v)
        if vals:
            series[name] = (np.asarray(steps), np.asarray(vals))
    if not series:
        raise InputError(f"{path}: no numeric loss column besides the step column {header[step_col]!r}")
    return series


def _series_from(source: Any) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str | None]:
    if isinstance(source, (str, Path)):
        return _read_loss_csv(Path(source)), Path(source).name
    if isinstance(source, Mapping):
        out = {}
        for name, val in source.items():
            if isinstance(val, tuple) and len(val) == 2:
                steps, vals = (np.asarray(v, dtype=np.float64).ravel() for v in val)
            else:
                vals = np.asarray(val, dtype=np.float64).ravel()
                steps = np.arange(vals.size, dtype=np.float64)
            if steps.shape != vals.shape:
                raise InputError(f"loss series {name!r}: {steps.size} steps but {vals.size} values")
            keep = np.isfinite(vals) & np.isfinite(steps)
            if keep.any():
                out[str(name)] = (steps[keep], vals[keep])
        if not out:
            raise InputError("plot_loss_curve: no finite loss values given")
        return out, None
    raise InputError(
        "plot_loss_curve: expected a CSV path or a mapping name -> values or (steps, values), "
        f"got {type(source).__name__}"
    )


def plot_loss_curve(
    source: str | Path | Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Training / validation loss against step, log-scaled y when every value is positive.

    ``source``: a CSV file with a header row -- the step column is the first of ``step``,
    ``num_iter``, ``iteration``, ``iter``, ``epoch`` present (else the first column), every
    other column with numbers is a series (empty cells skipped, e.g. validation loss logged
    every N steps) -- or a mapping ``name -> values`` / ``name -> (steps, values)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series, default_title = _series_from(source)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (steps, vals) in series.items():
        ax.plot(steps, vals, label=name, marker="o" if vals.size < 30 else None, markersize=3, linewidth=1.2)
    if all(np.all(v > 0) for _, v in series.values()):
        ax.set_yscale("log")
    else:
        log.info("plot_loss_curve: non-positive losses, using a linear y axis")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title or default_title:
        ax.set_title(title or default_title)
    return _save(fig, path, dpi)
