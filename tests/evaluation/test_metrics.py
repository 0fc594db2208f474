"""Tests of labelfree_jax.evaluation.metrics against hand-computed values and independent references."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats
import skimage.filters
import skimage.metrics

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation import metrics as M


def _smooth_field(shape, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (f - f.mean()) / f.std()


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(1)
    target = _smooth_field((10, 24, 24), 0).astype(np.float32)
    prediction = (0.8 * target + 0.3 * rng.standard_normal(target.shape) + 0.5).astype(np.float32)
    return prediction, target


# --- Pearson ---------------------------------------------------------------------------------
def test_pearson_matches_numpy_and_scipy(pair):
    p, t = pair
    r = M.pearson_r(p, t)
    assert r == pytest.approx(np.corrcoef(p.ravel().astype(float), t.ravel().astype(float))[0, 1], abs=1e-12)
    assert r == pytest.approx(scipy.stats.pearsonr(p.ravel().astype(float), t.ravel().astype(float))[0], abs=1e-12)
    assert 0.8 < r < 0.99


def test_pearson_hand_values_and_invariance():
    assert M.pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1, 2, 3, 4], y = [1, 3, 2, 4]: cov = 4/4, var = 5/4 each -> r = 0.8
    assert M.pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    x = np.arange(12.0).reshape(3, 4) ** 1.5
    y = np.sin(np.arange(12.0)).reshape(3, 4)
    assert M.pearson_r(3 * x + 7, y) == pytest.approx(M.pearson_r(x, y), abs=1e-12)


def test_pearson_mask_uses_only_selected_pixels(pair):
    p, t = pair
    mask = np.zeros(t.shape, bool)
    mask[:, :, 12:] = True
    expected = np.corrcoef(p[:, :, 12:].ravel(), t[:, :, 12:].ravel())[0, 1]
    assert M.pearson_r(p, t, mask) == pytest.approx(expected, abs=1e-6)
    assert M.pearson_r(p, t, mask) != pytest.approx(M.pearson_r(p, t), abs=1e-6)


def test_pearson_constant_is_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="labelfree_jax.evaluation.metrics"):
        assert math.isnan(M.pearson_r(np.ones((4, 4)), np.arange(16.0).reshape(4, 4)))
    assert "constant" in caplog.text


@pytest.mark.parametrize(
    "p, t, mask, match",
    [
        (np.zeros((3, 3)), np.zeros((3, 4)), None, "shape"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), None, "NaN"),
        (np.zeros(0), np.zeros(0), None, "empty"),
        (np.zeros(3), np.arange(3.0), np.zeros(3, bool), "no pixels"),
        (np.zeros(3), np.arange(3.0), np.ones(3), "bool"),
    ],
)
def test_bad_inputs_raise(p, t, mask, match):
    with pytest.raises(InputError, match=match):
        M.pearson_r(p, t, mask)


# --- intensity errors ------------------------------------------------------------------------
def test_mse_mae_nrmse_psnr_by_hand():
    p = np.array([[1.0, 2.0], [3.0, 5.0]])
    t = np.array([[1.0, 4.0], [2.0, 5.0]])
    # errors: 0, -2, 1, 0
    assert M.mse(p, t) == pytest.approx(5 / 4)
    assert M.mae(p, t) == pytest.approx(3 / 4)
    assert M.nrmse(p, t) == pytest.approx(math.sqrt(5 / 4) / 4)  # target range 5 - 1
    assert M.psnr(p, t) == pytest.approx(10 * math.log10(16 / (5 / 4)))
    assert M.psnr(p, t, data_range=1.0) == pytest.approx(10 * math.log10(1 / (5 / 4)))
    mask = np.array([[True, True], [False, False]])
    assert M.mse(p, t, mask) == pytest.approx(2.0)
    assert M.mae(p, t, mask) == pytest.approx(1.0)


def test_errors_match_skimage(pair):
    p, t = (a.astype(np.float64) for a in pair)
    dr = t.max() - t.min()
    assert M.mse(p, t) == pytest.approx(skimage.metrics.mean_squared_error(t, p), rel=1e-12)
    assert M.nrmse(p, t) == pytest.approx(
        skimage.metrics.normalized_root_mse(t, p, normalization="min-max"), rel=1e-12
    )
    assert M.psnr(p, t) == pytest.approx(skimage.metrics.peak_signal_noise_ratio(t, p, data_range=dr), rel=1e-12)


def test_psnr_identical_is_inf_and_constant_edge_cases():
    x = np.arange(6.0)
    assert M.psnr(x, x) == math.inf
    assert M.nrmse(x + 1, np.ones(6)) != M.nrmse(x + 1, np.ones(6))  # nan: zero range, non-zero error
    assert M.nrmse(np.ones(6), np.ones(6)) == 0.0


# --- SSIM ------------------------------------------------------------------------------------
def test_ssim_matches_skimage_3d_and_2d(pair):
    p, t = (a.astype(np.float64) for a in pair)
    dr = t.max() - t.min()
    assert M.ssim(p, t) == pytest.approx(skimage.metrics.structural_similarity(p, t, data_range=dr), abs=1e-10)
    assert M.ssim(p[4], t[4]) == pytest.approx(
        skimage.metrics.structural_similarity(p[4], t[4], data_range=t[4].max() - t[4].min()), abs=1e-10
    )
    assert M.ssim(t, t) == pytest.approx(1.0)
    assert M.ssim(p, t) < 0.99


def test_ssim_thin_and_singleton_axes(pair):
    p, t = (a.astype(np.float64) for a in pair)
    # a (1, Y, X) stack is the 2D image
    one = M.ssim(p[4:5], t[4:5])
    assert one == pytest.approx(M.ssim(p[4], t[4]), abs=1e-12)
    # Z = 2 cannot hold a window: slice-wise maps, averaged over the interior of both slices
    two = M.ssim(p[:2], t[:2], data_range=3.0)
    ref = np.mean([
        skimage.metrics.structural_similarity(p[i], t[i], data_range=3.0) for i in range(2)
    ])
    assert two == pytest.approx(ref, abs=1e-10)
    # Z = 5: window shrinks to 5
    five = M.ssim(p[:5], t[:5])
    assert five == pytest.approx(
        skimage.metrics.structural_similarity(p[:5], t[:5], win_size=5, data_range=t[:5].max() - t[:5].min()),
        abs=1e-10,
    )


# --- Otsu, Dice, IoU -------------------------------------------------------------------------
def test_dice_iou_hand_values():
    a = np.array([[1, 1, 0], [0, 1, 0]], bool)
    b = np.array([[1, 0, 0], [0, 1, 1]], bool)
    # |a| = 3, |b| = 3, |a & b| = 2, |a | b| = 4
    assert M.dice(a, b) == pytest.approx(4 / 6)
    assert M.iou(a, b) == pytest.approx(2 / 4)
    assert M.dice(a, a) == 1.0 and M.iou(a, a) == 1.0
    assert M.dice(a, ~a) == 0.0 and M.iou(a, ~a) == 0.0
    empty = np.zeros((2, 3), bool)
    assert M.dice(empty, empty) == 1.0 and M.iou(empty, empty) == 1.0
    with pytest.raises(InputError, match="bool"):
        M.dice(a.astype(int), b)


def test_otsu_threshold_and_dice_iou(pair):
    p, t = pair
    def upper_edge(x):  # skimage's optimal bin centre + half a bin
        x = x.astype(np.float64)
        return skimage.filters.threshold_otsu(x) + (x.max() - x.min()) / 512

    assert M.otsu_threshold(t) == pytest.approx(upper_edge(t))
    # the lower class's top value (0.1) sits in the optimal bin, below skimage's bin centre
    # (0.0914): it must still be background
    two_level = np.array([0.0, 0.1, 0.0, 5.0, 5.2, 4.9])
    assert skimage.filters.threshold_otsu(two_level) < 0.1
    thr = M.otsu_threshold(two_level)
    assert 0.1 < thr < 4.9
    assert M.otsu_binary(two_level).tolist() == [False, False, False, True, True, True]
    assert not M.otsu_binary(np.full((3, 3), 2.0)).any()
    d, j = M.otsu_dice_iou(p, t)
    bp = p > upper_edge(p)
    bt = t > upper_edge(t)
    inter, union = np.sum(bp & bt), np.sum(bp | bt)
    assert d == pytest.approx(2 * inter / (bp.sum() + bt.sum()))
    assert j == pytest.approx(inter / union)
    # Otsu per image: a rescaled prediction gives identical binaries
    assert M.otsu_dice_iou(100 * p + 3, t) == pytest.approx((d, j))


# --- noise ceiling ---------------------------------------------------------------------------
def test_cmax_matches_correlation_of_clean_signal_with_noisy_target():
    rng = np.random.default_rng(7)
    clean = 2.0 * _smooth_field((16, 64, 64), 3, sigma=2.0)  # variance 4
    sigma = 1.5  # SNR = 4 / 2.25
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    cmax = M.noise_ceiling_cmax(noisy, sigma**2)
    snr = 4.0 / sigma**2
    assert cmax == pytest.approx(math.sqrt(snr / (1 + snr)), abs=0.01)
    # a perfect predictor (the clean signal) reaches C_max against the noisy target
    assert M.pearson_r(clean, noisy) == pytest.approx(cmax, abs=0.005)


def test_cmax_edge_cases(caplog):
    t = np.arange(10.0)
    assert M.noise_ceiling_cmax(t, 0.0) == 1.0
    with caplog.at_level(logging.WARNING, logger="labelfree_jax.evaluation.metrics"):
        assert M.noise_ceiling_cmax(t, 1e6) == 0.0
    assert "noise variance" in caplog.text
    with pytest.raises(InputError, match="noise_variance"):
        M.noise_ceiling_cmax(t, -1.0)
    assert math.isnan(M.noise_ceiling_cmax(np.ones(5), 0.1))


def test_estimate_noise_variance():
    rng = np.random.default_rng(11)
    clean = 5.0 * _smooth_field((8, 96, 96), 5, sigma=8.0) + 100.0
    clean[:, 40:60, 40:60] += 30.0  # a sharp-edged object: edges must not dominate
    noisy = clean + 3.0 * rng.standard_normal(clean.shape)
    assert M.estimate_noise_variance(noisy) == pytest.approx(9.0, rel=0.05)
    # with a background mask: plain sample variance of the masked pixels
    flat = 50.0 + 2.0 * rng.standard_normal((32, 32))
    flat[:8] += np.linspace(0, 40, 32)  # structure outside the mask
    mask = np.zeros(flat.shape, bool)
    mask[10:] = True
    assert M.estimate_noise_variance(flat, mask) == pytest.approx(np.var(flat[10:], ddof=1))
    assert M.estimate_noise_variance(flat, mask) == pytest.approx(4.0, rel=0.15)


# --- evaluate --------------------------------------------------------------------------------
def test_evaluate_keys_and_values(pair):
    p, t = pair
    out = M.evaluate(p, t)
    assert set(out) == {"pearson_r", "mse", "mae", "nrmse", "psnr", "ssim", "dice_otsu", "iou_otsu"}
    assert out["pearson_r"] == M.pearson_r(p, t)
    assert out["mse"] == M.mse(p, t)
    assert out["ssim"] == M.ssim(p, t)
    assert (out["dice_otsu"], out["iou_otsu"]) == M.otsu_dice_iou(p, t)
    with_noise = M.evaluate(p, t, noise_variance=0.1)
    assert with_noise["c_max"] == pytest.approx(math.sqrt(1 - 0.1 / np.var(t.astype(np.float64))))
    assert all(isinstance(v, float) for v in with_noise.values())
    assert set(with_noise) <= set(M.METRIC_KEYS)


def test_pearson_on_real_allen_crop(shared_data):
    """The data README states r = 0.831 (whole crop) and 0.786 (x >= 96) for the 2017 prediction."""
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "allen_fnet2017_crop"
    dna = tifffile.imread(folder / "dna.tif")
    pred = tifffile.imread(folder / "fnet2017_prediction.tif")
    assert M.pearson_r(pred, dna) == pytest.approx(0.831, abs=0.0005)
    assert M.pearson_r(pred[..., 96:], dna[..., 96:]) == pytest.approx(0.786, abs=0.0005)
