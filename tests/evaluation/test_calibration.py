"""labelfree_jax.evaluation.calibration against scipy.stats and synthetic data whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.calibration import (
    calibration_curve,
    calibration_metrics,
    gaussian_z,
    interval_coverage,
    plot_calibration_curve,
    rankdata,
    spearman_r,
)


@pytest.fixture(scope="module")
def calibrated():
    """200,000 pixels whose errors are drawn from N(0, sd) with a varying sd: a calibrated SD map."""
    rng = np.random.default_rng(0)
    sd = rng.uniform(0.05, 2.0, (2, 400, 250))
    prediction = rng.normal(size=sd.shape)
    target = prediction + rng.normal(0.0, sd)
    return prediction, target, sd


@pytest.mark.parametrize("level", [0.1, 0.5, 0.68, 0.95, 0.99])
def test_gaussian_z_is_scipy_quantile(level):
    assert gaussian_z(level) == pytest.approx(scipy.stats.norm.ppf(0.5 + level / 2), rel=1e-12)


def test_calibrated_errors_give_nominal_coverage(calibrated):
    m = calibration_metrics(*calibrated)
    # binomial SD of a coverage over 200,000 pixels is <= 0.0011: 5 SDs
    assert m["coverage_68"] == pytest.approx(0.68, abs=0.0055)
    assert m["coverage_95"] == pytest.approx(0.95, abs=0.0055)
    assert m["rms_sd"] == pytest.approx(m["rmse"], rel=0.01)
    assert m["n"] == 200_000
    # a calibrated, varying SD ranks the errors: clearly positive correlations
    assert m["spearman_sd_abs_error"] > 0.4 and m["pearson_sd_abs_error"] > 0.4


def test_an_sd_half_too_small_covers_what_the_normal_law_says(calibrated):
    prediction, target, sd = calibrated
    for level in (0.68, 0.95):
        expected = 2 * scipy.stats.norm.cdf(scipy.stats.norm.ppf(0.5 + level / 2) * 0.5) - 1
        assert interval_coverage(prediction, target, sd * 0.5, level) == pytest.approx(expected, abs=0.0055)


def test_coverage_counts_pixels_inside_the_interval_exactly():
    prediction = np.zeros(6)
    target = np.array([0.0, 0.5, -0.9, 1.0, 2.5, -3.0])
    sd = np.ones(6)
    z = scipy.stats.norm.ppf(0.975)  # 1.96
    expected = np.mean(np.abs(target - prediction) <= z * sd)  # 4 of 6
    assert interval_coverage(prediction, target, sd, 0.95) == expected == pytest.approx(4 / 6)
    # an SD of 0 covers only exact predictions
    assert interval_coverage(prediction, target, np.zeros(6), 0.68) == pytest.approx(1 / 6)


def test_rankdata_and_spearman_equal_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 7, (30, 20)).astype(np.float32)  # many ties
    b = a + rng.normal(0, 3, a.shape)
    np.testing.assert_array_equal(rankdata(a), scipy.stats.rankdata(a.ravel()))
    assert spearman_r(a, b) == pytest.approx(scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_correlations_equal_scipy(calibrated):
    prediction, target, sd = (x[0, :50] for x in calibrated)
    m = calibration_metrics(prediction, target, sd)
    err = np.abs(target - prediction).ravel()
    assert m["pearson_sd_abs_error"] == pytest.approx(scipy.stats.pearsonr(sd.ravel(), err).statistic, abs=1e-10)
    assert m["spearman_sd_abs_error"] == pytest.approx(scipy.stats.spearmanr(sd.ravel(), err).statistic, abs=1e-10)
    assert m["mean_sd"] == pytest.approx(sd.mean())
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))


def test_calibration_curve_is_coverage_at_each_level(calibrated):
    prediction, target, sd = calibrated
    levels = (0.2, 0.5, 0.9)
    expected, observed = calibration_curve(prediction, target, sd, levels)
    np.testing.assert_array_equal(expected, levels)
    for level, obs in zip(levels, observed):
        assert obs == interval_coverage(prediction, target, sd, level)
    np.testing.assert_allclose(observed, levels, atol=0.006)


def test_plot_calibration_curve_writes_a_png(tmp_path, calibrated):
    curve = calibration_curve(*calibrated)
    path = plot_calibration_curve({"calibrated": curve, "too small": (curve[0], curve[1] * 0.5)}, tmp_path / "c.png",
                                  title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="no calibration curve"):
        plot_calibration_curve({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(
    ("sd", "target", "message"),
    [
        (-np.ones((3, 3)), np.zeros((3, 3)), "negative value"),
        (np.ones((3, 4)), np.zeros((3, 3)), "shape"),
        (np.ones((3, 3)), np.full((3, 3), np.nan), "NaN"),
    ],
)
def test_bad_input_is_refused(sd, target, message):
    with pytest.raises(InputError, match=message):
        calibration_metrics(np.zeros((3, 3)), target, sd)


def test_level_outside_unit_interval_is_refused():
    with pytest.raises(InputError, match=r"in \(0, 1\)"):
        gaussian_z(1.0)
