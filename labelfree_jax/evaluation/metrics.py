"""Image-comparison metrics for label-free prediction (numpy / scikit-image, no JAX).

Every function takes plain arrays of any shape -- one image or one channel, e.g. ``(Z, Y, X)``
or ``(Y, X)`` -- and compares them pixel by pixel; channel-first multi-channel arrays should be
compared one channel at a time (:func:`labelfree_jax.evaluation.report.write_report` does that). Values are
computed in float64 and returned as Python ``float``. Intensities are in whatever units the
arrays carry (raw counts, or z-scored units for network outputs); the unit-dependent metrics
(MSE, MAE, PSNR) are only meaningful when prediction and target share units.

Inputs with different shapes, no pixels, or non-finite values raise
:class:`~labelfree_jax.core.errors.InputError`. A ``mask`` (bool, same shape) restricts a metric to
the selected pixels.

The headline metric of Ounkomol et al. 2018 ("Label-free prediction of three-dimensional
fluorescence images from transmitted-light microscopy", Nature Methods 15:917-920) is the
pixel-wise Pearson correlation between prediction and observed target; :func:`noise_ceiling_cmax`
is that paper's C_max bound on it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError

__all__ = [
    "METRIC_KEYS",
    "dice",
    "estimate_noise_variance",
    "evaluate",
    "iou",
    "mae",
    "mse",
    "noise_ceiling_cmax",
    "nrmse",
    "otsu_binary",
    "otsu_dice_iou",
    "otsu_threshold",
    "pearson_r",
    "psnr",
    "ssim",
]

log = logging.getLogger(__name__)

#: Keys of :func:`evaluate`'s result, in table order (``c_max`` only with a noise variance).
METRIC_KEYS: tuple[str, ...] = (
    "pearson_r",
    "c_max",
    "mse",
    "mae",
    "nrmse",
    "psnr",
    "ssim",
    "dice_otsu",
    "iou_otsu",
)

# 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
_MAD_TO_SIGMA = 1.482602218505602

# Histogram bins of the Otsu threshold (scikit-image's default).
_OTSU_BINS = 256


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------
def _as_float(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{what}: the array is empty (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: contains NaN or infinite values")
    return arr


def _check_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != bool:
        raise InputError(f"mask: expected a bool array, got dtype {m.dtype}")
    if m.shape != shape:
        raise InputError(f"mask: shape {m.shape} differs from the images' shape {shape}")
    if not m.any():
        raise InputError("mask: selects no pixels")
    return m


def _pair(prediction: Any, target: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 ``(prediction, target)`` restricted to ``mask`` (flattened if masked)."""
    p = _as_float(prediction, "prediction")
    t = _as_float(target, "target")
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = _check_mask(mask, t.shape)
    if m is not None:
        return p[m], t[m]
    return p, t


# --------------------------------------------------------------------------------------------
# correlation and the noise ceiling
# --------------------------------------------------------------------------------------------
def pearson_r(prediction: Any, target: Any, mask: Any = None) -> float:
    """Pixel-wise Pearson correlation coefficient of two images (flattened).

    ``prediction``, ``target``: arrays of the same (any) shape, any units. ``mask``: optional
    bool array of that shape; only selected pixels count. Returns r in [-1, 1]; it is invariant
    to offset and positive scale of either image.

    Edge case: if either image is constant (zero variance over the pixels used) r is undefined;
    this returns ``nan`` and logs a warning rather than raising, so that one blank channel does
    not abort a whole evaluation.
    """
    p, t = _pair(prediction, target, mask)
    dp = p.ravel() - p.mean()
    dt = t.ravel() - t.mean()
    denom = math.sqrt(float(np.dot(dp, dp)) * float(np.dot(dt, dt)))
    if denom == 0.0:
        log.warning("pearson_r: %s is constant; correlation is undefined (nan)",
                    "prediction" if not np.any(dp) else "target")
        return float("nan")
    return float(np.clip(np.dot(dp, dt) / denom, -1.0, 1.0))


def estimate_noise_variance(image: Any, background_mask: Any = None) -> float:
    """Estimate the variance of the additive noise in ``image`` (intensity units squared).

    ``image``: one channel, any shape (``(Z, Y, X)``, ``(Y, X)``...).

    * With ``background_mask`` (bool, same shape): the sample variance (``ddof=1``) of the
      pixels it selects. Pick a region with no labelled structure (e.g. outside the cells),
      where every fluctuation is noise; at least 2 pixels.
    * Without a mask: a robust estimate from neighbouring-pixel differences. For white noise
      of variance s^2 on a signal that is smooth at the pixel scale, the differences
      ``x[..., i+1] - x[..., i]`` (along the last two axes, Y and X) have variance 2 s^2;
      their median absolute deviation, scaled by 1.4826 (Gaussian consistency) and divided by
      sqrt(2), estimates s, and structure edges -- a minority of pixel pairs -- barely move the
      median. It over-estimates on strongly textured images and under-estimates spatially
      correlated (e.g. smoothed or upsampled) noise; prefer a background mask when possible.
      (``skimage.restoration.estimate_sigma`` would need PyWavelets, not a dependency here.)
    """
    x = _as_float(image, "image")
    if background_mask is not None:
        m = _check_mask(background_mask, x.shape)
        values = x[m]
        if values.size < 2:
            raise InputError("background_mask: needs at least 2 pixels to estimate a variance")
        return float(np.var(values, ddof=1))
    diffs = [np.diff(x, axis=ax).ravel() for ax in range(max(0, x.ndim - 2), x.ndim) if x.shape[ax] > 1]
    if not diffs:
        raise InputError(f"image: shape {x.shape} has no axis with 2 or more pixels")
    d = np.concatenate(diffs)
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    return sigma * sigma


def noise_ceiling_cmax(target: Any, noise_variance: float, mask: Any = None) -> float:
    """C_max: the highest Pearson r any prediction can reach against a noisy ``target``.

    Ounkomol et al. 2018 (Nature Methods 15:917, Methods, "theoretical upper bound on model
    performance") model the observed target as ``T = T_ideal + N`` with noise ``N`` that is
    uncorrelated with the ideal image. Even a perfect prediction (``= T_ideal``) then only
    reaches

        C_max = sqrt(SNR / (1 + SNR)),   SNR = var(T_ideal) / var(N),

    because ``r(T_ideal, T) = var(T_ideal) / sqrt(var(T_ideal) (var(T_ideal) + var(N)))``.
    Here ``var(T_ideal) = var(target) - noise_variance`` (population variance over the pixels
    used), so ``C_max = sqrt(1 - noise_variance / var(target))``.

    ``target``: one channel, any shape. ``noise_variance``: variance of the noise in target
    intensity units squared (see :func:`estimate_noise_variance`), >= 0. ``mask``: optional bool
    array selecting the pixels (as for :func:`pearson_r`).

    Edge cases: ``noise_variance == 0`` gives 1.0. If ``noise_variance >= var(target)`` the
    implied signal variance is <= 0: C_max is 0.0 (a warning is logged; the noise estimate is
    probably too high). A constant target gives ``nan`` (warning). A negative or non-finite
    ``noise_variance`` raises :class:`InputError`.
    """
    t = _as_float(target, "target")
    m = _check_mask(mask, t.shape)
    if m is not None:
        t = t[m]
    nv = float(noise_variance)
    if not math.isfinite(nv) or nv < 0:
        raise InputError(f"noise_variance must be a finite number >= 0, got {noise_variance!r}")
    total = float(np.var(t))
    if total == 0.0:
        log.warning("noise_ceiling_cmax: target is constant; C_max is undefined (nan)")
        return float("nan")
    signal = total - nv
    if signal <= 0.0:
        log.warning(
            "noise_ceiling_cmax: noise variance %.4g >= target variance %.4g; C_max = 0", nv, total
        )
        return 0.0
    if nv == 0.0:
        return 1.0
    snr = signal / nv
    return float(math.sqrt(snr / (1.0 + snr)))


# --------------------------------------------------------------------------------------------
# intensity errors
# --------------------------------------------------------------------------------------------
def mse(prediction: Any, target: Any, mask: Any = None) -> float:
    """Mean squared error ``mean((prediction - target)^2)`` (intensity units squared)."""
    p, t = _pair(prediction, target, mask)
    return float(np.mean(np.square(p - t)))


def mae(prediction: Any, target: Any, mask: Any = None) -> float:
    """Mean absolute error ``mean(|prediction - target|)`` (intensity units)."""
    p, t = _pair(prediction, target, mask)
    return float(np.mean(np.abs(p - t)))


def nrmse(prediction: Any, target: Any, mask: Any = None) -> float:
    """Root mean squared error divided by the target's range ``max(target) - min(target)``.

    This is scikit-image's ``normalized_root_mse(target, prediction, normalization="min-max")``
    (dimensionless). A constant target (range 0) gives ``nan`` (``0.0`` if the prediction
    equals it exactly).
    """
    p, t = _pair(prediction, target, mask)
    rmse = math.sqrt(float(np.mean(np.square(p - t))))
    rng = float(t.max() - t.min())
    if rng == 0.0:
        return 0.0 if rmse == 0.0 else float("nan")
    return rmse / rng


def _data_range(t: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        return float(t.max() - t.min())
    dr = float(data_range)
    if not math.isfinite(dr) or dr < 0:
        raise InputError(f"data_range must be a finite number >= 0, got {data_range!r}")
    return dr


def psnr(prediction: Any, target: Any, data_range: float | None = None, mask: Any = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    ``data_range`` (intensity units) defaults to the target's ``max - min`` -- the right choice
    for float images, whose dtype says nothing about their range. Identical images give
    ``inf``; a zero data range with a non-zero error gives ``nan``. Matches
    ``skimage.metrics.peak_signal_noise_ratio`` given the same ``data_range``.
    """
    p, t = _pair(prediction, target, mask)
    dr = _data_range(t, data_range)
    err = float(np.mean(np.square(p - t)))
    if err == 0.0:
        return float("inf")
    if dr == 0.0:
        return float("nan")
    return float(10.0 * math.log10(dr * dr / err))


def _ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel SSIM map and the mask of pixels away from the window border, shape of ``a``.

    Axes shorter than 3 pixels cannot hold a window: the map is then computed slice by slice
    along them.
    """
    from skimage.metrics import structural_similarity

    if a.ndim == 0:
        return np.full((), np.nan), np.zeros((), bool)
    short = [ax for ax, s in enumerate(a.shape) if s < 3]
    if short:
        ax = short[0]
        parts = [_ssim_map(np.take(a, i, ax), np.take(b, i, ax), data_range) for i in range(a.shape[ax])]
        return np.stack([s for s, _ in parts], ax), np.stack([v for _, v in parts], ax)
    win = min(7, *a.shape)
    if win % 2 == 0:
        win -= 1
    _, smap = structural_similarity(a, b, win_size=win, data_range=data_range, full=True)
    pad = (win - 1) // 2
    valid = np.zeros(a.shape, bool)
    valid[tuple(slice(pad, s - pad) for s in a.shape)] = True
    return smap, valid


def ssim(prediction: Any, target: Any, data_range: float | None = None, mask: Any = None) -> float:
    """Mean structural similarity (Wang et al. 2004) of two 2D or 3D images, in [-1, 1].

    Uses ``skimage.metrics.structural_similarity`` with its defaults (uniform 7-pixel window in
    every axis, sample covariances, K1 = 0.01, K2 = 0.03); 3D arrays get a 3D window. Length-1
    axes are dropped, the window shrinks to the shortest axis (odd, >= 3) and axes shorter than
    3 are handled slice by slice. As in scikit-image, the mean excludes the border strip of half
    a window. ``data_range`` defaults to the target's ``max - min``. With ``mask`` the SSIM map
    is averaged over the masked pixels (outside the border strip) only.

    Edge cases: a zero data range gives ``nan`` (1.0 if the images are identical); so does an
    image with no pixel outside the border strip.
    """
    p = _as_float(prediction, "prediction")
    t = _as_float(target, "target")
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = _check_mask(mask, t.shape)
    dr = _data_range(t[m] if m is not None else t, data_range)
    if dr == 0.0:
        return 1.0 if np.array_equal(p, t) else float("nan")
    keep = tuple(s for s in t.shape if s > 1)
    smap, valid = _ssim_map(p.reshape(keep), t.reshape(keep), dr)
    smap, valid = smap.reshape(t.shape), valid.reshape(t.shape)
    if m is not None:
        valid = valid & m
    if not valid.any():
        log.warning("ssim: shape %s leaves no pixel outside the window border; nan", t.shape)
        return float("nan")
    return float(np.mean(smap[valid], dtype=np.float64))


# --------------------------------------------------------------------------------------------
# segmentation overlap
# --------------------------------------------------------------------------------------------
def otsu_threshold(x: Any, mask: Any = None) -> float:
    """Otsu's threshold of an image's intensities (256-bin histogram over ``[min, max]``).

    ``x``: any shape; ``mask`` selects the pixels whose histogram is used. Returns a value in
    intensity units; foreground is ``x > threshold``. The optimal bin is found by
    ``skimage.filters.threshold_otsu``; this returns that bin's upper edge (skimage returns its
    centre, which would put part of the background class -- the pixels in the upper half of the
    optimal bin -- into the foreground). A constant image returns its value (so its foreground
    is empty).
    """
    from skimage.filters import threshold_otsu

    v = _as_float(x, "image")
    m = _check_mask(mask, v.shape)
    v = v[m] if m is not None else v.ravel()
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    # skimage returns the centre of the optimal histogram bin, but Otsu's split puts that whole
    # bin in the background class; its upper edge makes "x > threshold" match the split.
    return float(threshold_otsu(v, nbins=_OTSU_BINS)) + 0.5 * (hi - lo) / _OTSU_BINS


def otsu_binary(x: Any, mask: Any = None) -> np.ndarray:
    """Foreground ``x > otsu_threshold(x)`` as a bool array of ``x``'s shape (False off ``mask``)."""
    v = _as_float(x, "image")
    out = v > otsu_threshold(v, mask)
    if mask is not None:
        out &= np.asarray(mask)
    return out


def _bool_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype != bool or y.dtype != bool:
        raise InputError(f"expected bool arrays, got {x.dtype} and {y.dtype}")
    if x.shape != y.shape:
        raise InputError(f"binary images differ in shape: {x.shape} vs {y.shape}")
    return x, y


def dice(a: Any, b: Any) -> float:
    """Dice coefficient ``2 |a & b| / (|a| + |b|)`` of two bool arrays of the same shape.

    Two empty masks agree perfectly: 1.0.
    """
    x, y = _bool_pair(a, b)
    total = int(x.sum()) + int(y.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(x, y).sum()) / total


def iou(a: Any, b: Any) -> float:
    """Intersection over union (Jaccard index) ``|a & b| / |a | b|`` of two bool arrays.

    Two empty masks agree perfectly: 1.0.
    """
    x, y = _bool_pair(a, b)
    union = int(np.logical_or(x, y).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(x, y).sum()) / union


def otsu_dice_iou(prediction: Any, target: Any, mask: Any = None) -> tuple[float, float]:
    """``(dice, iou)`` of the Otsu foregrounds of prediction and target.

    Each image is thresholded with its own Otsu threshold (prediction and target are often in
    different units), restricted to ``mask`` when given; then :func:`dice` and :func:`iou`.
    """
    p = _as_float(prediction, "prediction")
    t = _as_float(target, "target")
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = _check_mask(mask, t.shape)
    bp, bt = otsu_binary(p, m), otsu_binary(t, m)
    return dice(bp, bt), iou(bp, bt)


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------
def evaluate(
    prediction: Any,
    target: Any,
    *,
    noise_variance: float | None = None,
    mask: Any = None,
    data_range: float | None = None,
) -> dict[str, float]:
    """All metrics of one prediction against its observed target (one channel, same shape).

    Returns ``{"pearson_r", "mse", "mae", "nrmse", "psnr", "ssim", "dice_otsu", "iou_otsu"}``
    plus ``"c_max"`` when ``noise_variance`` (target units squared) is given; see the single
    functions for definitions and edge cases (values may be ``nan`` or ``inf``). ``data_range``
    (PSNR, SSIM) defaults to the target's ``max - min`` over the pixels used.
    """
    p = _as_float(prediction, "prediction")
    t = _as_float(target, "target")
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = _check_mask(mask, t.shape)
    dr = _data_range(t[m] if m is not None else t, data_range)
    d, j = otsu_dice_iou(p, t, m)
    out: dict[str, float] = {"pearson_r": pearson_r(p, t, m)}
    if noise_variance is not None:
        out["c_max"] = noise_ceiling_cmax(t, noise_variance, m)
    out.update(
        mse=mse(p, t, m),
        mae=mae(p, t, m),
        nrmse=nrmse(p, t, m),
        psnr=psnr(p, t, dr, m),
        ssim=ssim(p, t, dr, m),
        dice_otsu=d,
        iou_otsu=j,
    )
    return out
