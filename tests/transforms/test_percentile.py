"""``normalize_percentile`` (issue 16): per-image and dataset percentile normalisation, its inverse, strict config."""

from __future__ import annotations

import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.transforms import Pipeline, transform_from_dict
from labelfree_jax.transforms.intensity import NormalizePercentile


def _image(shape=(2, 9, 31, 27), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 300.0, size=shape)
    if shape[0] > 1:
        x[1] = 50 + 3 * x[1]  # another offset and gain in the second channel
    return x.astype(np.float32)


@pytest.mark.parametrize("low, high", [(1.0, 99.8), (3.0, 97.0), (0.0, 100.0)])
def test_per_image_equals_numpy_percentile_math_and_inverts(low, high):
    x = _image()
    step = transform_from_dict({"name": "normalize_percentile", "low": low, "high": high})
    y, info = step.apply(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    for c in range(x.shape[0]):
        v = x[c].astype(np.float64)
        lo, hi = np.percentile(v, low), np.percentile(v, high)  # independent: per channel, numpy's linear rule
        np.testing.assert_allclose(y[c], (v - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
        assert np.mean(y[c] <= 0) == pytest.approx(low / 100, abs=1.5e-3)  # p_low -> 0, p_high -> 1
        assert np.mean(y[c] >= 1) == pytest.approx(1 - high / 100, abs=1.5e-3)
    back = step.invert(y, info)
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-3)


def test_2d_image_and_default_percentiles():
    x = _image((1, 40, 50), seed=1)
    y, info = NormalizePercentile().apply(x)
    lo, hi = np.percentile(x[0].astype(np.float64), [1.0, 99.8])
    np.testing.assert_allclose(y[0], (x[0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(NormalizePercentile().invert(y, info), x, rtol=1e-5, atol=1e-3)


def test_dataset_statistics_are_fixed_values():
    x = _image()
    values = ((100.0, 1500.0), (400.0, 5000.0))
    step = NormalizePercentile(statistics="dataset", values=values)
    y, info = step.apply(x)
    for c, (lo, hi) in enumerate(values):
        np.testing.assert_allclose(y[c], (x[c].astype(np.float64) - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step.invert(y, info), x, rtol=1e-5, atol=1e-3)
    # the same numbers for every image: half the image gives the same values where it overlaps
    y_half, _ = step.apply(x[:, :, :15])
    np.testing.assert_array_equal(y_half, y[:, :, :15])
    with pytest.raises(InputError, match="statistics are for 2 channel"):
        step.apply(x[:1])
    with pytest.raises(InputError, match="no values yet"):
        NormalizePercentile(statistics="dataset").apply(x)


def test_constant_channel_is_refused():
    x = _image((2, 20, 20))
    x[1] = 7.0
    with pytest.raises(InputError, match="channel 1 has the same value"):
        NormalizePercentile().apply(x)


def test_strict_config_and_json_round_trip():
    items = [{"name": "normalize_percentile", "low": 2.0, "high": 99.0},
             {"name": "normalize_percentile", "statistics": "dataset", "values": [[0.0, 1.0], [5.0, 9.5]]}]
    pipe = Pipeline.from_json(items)
    assert Pipeline.from_json(pipe.to_json()) == pipe
    assert pipe.steps[1].values == ((0.0, 1.0), (5.0, 9.5))
    bad = [
        ({"low": 50.0, "high": 50.0}, "must be below high"),
        ({"high": 101.0}, "high"),
        ({"values": [[0.0, 1.0]]}, "give them with statistics='dataset'"),
        ({"statistics": "dataset", "values": [[2.0, 1.0]]}, "low value < high value"),
        ({"low": "1"}, "low"),
        ({"clip": True}, "unknown parameter 'clip'"),
    ]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message):
            transform_from_dict({"name": "normalize_percentile", **extra})
