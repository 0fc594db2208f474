"""Tests for labelfree_jax.transforms: invertibility, validation, JSON (fnet strings: tests/compat/test_fnet_transforms.py)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pydantic
import pytest
import scipy.ndimage

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.transforms import (
    TRANSFORM_REGISTRY,
    Clip,
    CropToMultiple,
    InverseInfo,
    Normalize,
    NormAroundCenter,
    PadToMultiple,
    Pipeline,
    PipelineState,
    Resize,
    transform_from_dict,
)

SHAPE_3D = (1, 37, 101, 73)
SHAPE_2D = (2, 101, 73)


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


def _smooth(shape):
    """Low-frequency image (periods ≥ ~40 px) so spline resampling barely loses anything."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, s) for s in shape[1:]], indexing="ij")
    chans = []
    for c in range(shape[0]):
        v = np.full(shape[1:], 2.0 + c)
        for k, g in enumerate(grids):
            v = v + np.sin(2 * np.pi * (0.8 + 0.3 * k) * g + c)
        chans.append(v)
    return np.stack(chans).astype(np.float32)


ALL_TRANSFORMS = [
    Normalize(),
    NormAroundCenter(n_slices=8),
    Resize(zoom=(1.0, 0.5, 0.5)),
    PadToMultiple(),
    PadToMultiple(mode="constant", axes=("y", "x")),
    CropToMultiple(),
    Clip(low=-1.0, high=10.0),
]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", [SHAPE_3D, SHAPE_2D])
@pytest.mark.parametrize("t", [Normalize(), PadToMultiple(), PadToMultiple(mode="edge"), PadToMultiple(mode="constant")])
def test_exact_inverse(t, shape):
    x = _random(shape)
    y, info = t.apply(x)
    assert y.dtype == np.float32
    back = t.invert(y, info)
    assert back.shape == x.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)


def test_normalize_matches_numpy():
    x = _random(SHAPE_2D)
    y, info = Normalize().apply(x)
    for c in range(x.shape[0]):
        ref = (x[c].astype(np.float64) - x[c].mean(dtype=np.float64)) / x[c].std(dtype=np.float64)
        np.testing.assert_allclose(y[c], ref, rtol=1e-5, atol=1e-5)
        assert abs(float(y[c].mean())) < 1e-5 and abs(float(y[c].std()) - 1.0) < 1e-5
    assert info.mean == pytest.approx([x[c].mean(dtype=np.float64) for c in range(2)], rel=1e-6)


def test_norm_around_center_uses_central_slices():
    x = _random((1, 40, 9, 7))
    x[:, :4] += 100.0  # outside the central 32 slices: must not influence the statistics
    y, info = NormAroundCenter().apply(x)
    start = 40 // 2 - 32 // 2
    chunk = x[0, start : start + 32].astype(np.float64)
    assert start == 4
    np.testing.assert_allclose(y[0], (x[0] - chunk.mean()) / chunk.std(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(NormAroundCenter().invert(y, info), x, rtol=1e-5, atol=1e-4)
    assert NormAroundCenter(n_slices=4).center_slices(13) == (4, 8)


def test_norm_around_center_small_z(caplog):
    x = _random((1, 13, 9, 7))
    with caplog.at_level(logging.WARNING, logger="labelfree_jax.transforms"):
        y, _ = NormAroundCenter().apply(x)
    assert "13 z-slices < n_slices=32" in caplog.text
    np.testing.assert_allclose(y, Normalize().apply(x)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="13 z-slices, fewer than n_slices=32"):
        NormAroundCenter(fallback="error").apply(x)
    with pytest.raises(InputError, match="needs a 3D image"):
        NormAroundCenter().apply(_random(SHAPE_2D))


def test_resize_forward_matches_original_resizer():
    x = _random((2, 9, 20, 17))
    factors = (1, 0.37241, 0.37241)
    y, info = Resize(zoom=factors).apply(x)
    for c in range(2):
        ref = scipy.ndimage.zoom(x[c], factors, mode="nearest")  # fnet.transforms.Resizer
        assert y[c].shape == ref.shape
        np.testing.assert_array_equal(y[c], ref)
    assert info.shape_out == (9, 7, 6)


@pytest.mark.parametrize(
    "shape,zoom", [(SHAPE_3D, (1.0, 0.5, 0.5)), (SHAPE_3D, (0.7, 1.3, 0.37241)), (SHAPE_2D, (0.5931, 0.5931))]
)
def test_resize_round_trip_smooth(shape, zoom):
    x = _smooth(shape)
    t = Resize(zoom=zoom)
    y, info = t.apply(x)
    expected = tuple(round(s * f) for s, f in zip(shape[1:], zoom))
    assert y.shape == (shape[0],) + expected
    back = t.invert(y, info)
    assert back.shape == x.shape  # exact shape, whatever the rounding
    # Smooth image, value range ~5-6. Measured (scipy 1.17): max error 0.016-0.037, reached at the
    # border ('nearest' extension); 3 px inside the border <= 0.0085; mean <= 0.0022.
    err = np.abs(back - x)
    inner = err[(slice(None),) + tuple(slice(3, -3) for _ in shape[1:])]
    assert float(err.max()) < 0.05  # < 1 % of the value range
    assert float(inner.max()) < 0.01
    assert float(err.mean()) < 0.003


def test_resize_rounding_never_changes_inverse_shape():
    t = Resize(zoom=(0.37241, 0.37241))
    for side in range(2, 40):  # side 1 * 0.37 rounds to 0: an error, tested elsewhere
        x = _smooth((1, side + 2, side))
        y, info = t.apply(x)
        assert t.invert(y, info).shape == x.shape


def test_resize_from_pixel_sizes():
    x = _smooth((1, 6, 40, 30))
    t = Resize(target_pixel_size=(0.5, 0.4, 0.4))
    ps = {"z": 1.0, "y": 0.2, "x": 0.2}
    y, _ = t.apply(x, pixel_sizes=ps)
    assert y.shape == (1, 12, 20, 15)
    assert t.factors(3, ps) == pytest.approx((2.0, 0.5, 0.5))
    y2, _ = Resize(source_pixel_size=(1.0, 0.2, 0.2), target_pixel_size=(0.5, 0.4, 0.4)).apply(x)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(InputError, match="no pixel sizes"):
        t.apply(x)
    with pytest.raises(InputError, match=r"lack axes \['z'\]"):
        t.apply(x, pixel_sizes={"y": 0.2, "x": 0.2})
    with pytest.raises(InputError, match="2 spatial axes"):
        t.apply(x[:, 0])
    with pytest.raises(InputError, match="zoom has 3 values but the image has 2 spatial axes"):
        Resize(zoom=(1, 2, 2)).apply(x[:, 0])
    with pytest.raises(InputError, match="empty axis"):
        Resize(zoom=(0.01, 0.01)).apply(x[:, 0])


@pytest.mark.parametrize("shape", [SHAPE_3D, SHAPE_2D, (1, 3, 5), (1, 1, 2, 17)])
def test_pad_to_multiple_shapes_and_values(shape):
    x = _random(shape)
    for mode in ("reflect", "edge", "constant"):
        t = PadToMultiple(mode=mode)
        y, info = t.apply(x)
        assert all(s % 16 == 0 for s in y.shape[1:])
        assert y.shape[1:] == t.output_spatial_shape(shape[1:])
        pw = [(((-s) % 16) // 2, (-s) % 16 - ((-s) % 16) // 2) for s in shape[1:]]
        np.testing.assert_array_equal(y, np.pad(x, [(0, 0)] + pw, mode=mode))
        if mode != "constant":  # padding never invents values outside the image's range
            assert y.min() >= x.min() and y.max() <= x.max()
        np.testing.assert_array_equal(t.invert(y, info), x)


def test_pad_axes_subset():
    x = _random((1, 13, 20, 33))
    y, _ = PadToMultiple(axes=("y", "x")).apply(x)
    assert y.shape == (1, 13, 32, 48)
    y2, _ = PadToMultiple(axes=("z",)).apply(_random((1, 20, 33)))  # no z in 2D: nothing to pad
    assert y2.shape == (1, 20, 33)


@pytest.mark.parametrize("shape", [SHAPE_3D, SHAPE_2D])
def test_crop_to_multiple(shape):
    x = _random(shape)
    t = CropToMultiple()
    y, info = t.apply(x)
    assert all(s % 16 == 0 for s in y.shape[1:])
    starts = [(s % 16) // 2 for s in shape[1:]]
    sl = tuple(slice(a, a + n) for a, n in zip(starts, y.shape[1:]))
    np.testing.assert_array_equal(y, x[(slice(None),) + sl])
    back = t.invert(y, info)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back[(slice(None),) + sl], y)
    # the cropped border repeats the nearest kept pixel (edge mode)
    pads = [(0, 0)] + [(a, s - a - n) for a, s, n in zip(starts, shape[1:], y.shape[1:])]
    np.testing.assert_array_equal(back, np.pad(y, pads, mode="edge"))


def test_crop_too_small_side():
    with pytest.raises(InputError, match="axis 'z' has 13 pixels, fewer than multiple=16"):
        CropToMultiple().apply(_random((1, 13, 40, 40)))
    y, _ = CropToMultiple(axes=("y", "x")).apply(_random((1, 13, 40, 40)))
    assert y.shape == (1, 13, 32, 32)


def test_clip():
    x = _random(SHAPE_2D)
    y, info = Clip(low=1.0, high=4.0).apply(x)
    np.testing.assert_array_equal(y, np.clip(x, 1.0, 4.0))
    np.testing.assert_array_equal(Clip(low=1.0, high=4.0).invert(y, info), y)


# ----------------------------------------------------------------------------- pipelines


def test_pipeline_round_trip_and_geometric_only():
    x = _smooth(SHAPE_3D)
    p = Pipeline.from_json(
        [
            {"name": "normalize"},
            {"name": "resize", "zoom": [1, 0.5, 0.5]},
            {"name": "pad_to_multiple", "multiple": 16},
        ]
    )
    y, state = p.apply(x)
    assert isinstance(state, PipelineState)
    assert y.shape == (1, 48, 64, 48) == (1,) + p.output_shape(SHAPE_3D[1:])
    assert y.dtype == np.float32
    back = p.invert(y, state)
    assert back.shape == x.shape
    err = np.abs(back - x)  # same resampling error as test_resize_round_trip_smooth
    assert float(err.max()) < 0.05 and float(err.mean()) < 0.003

    # a 3-channel "prediction" on the transformed grid comes back onto the input grid
    pred = np.stack([y[0], 2 * y[0], -y[0]])
    geo = p.invert(pred, state, geometric_only=True)
    assert geo.shape == (3,) + SHAPE_3D[1:]
    ref = Pipeline(steps=p.steps[1:])
    _, ref_state = ref.apply(x)
    np.testing.assert_allclose(geo, ref.invert(pred, ref_state), rtol=1e-6, atol=1e-6)
    # not un-normalized: still on the normalized scale
    assert float(np.abs(geo[0] - Normalize().apply(x)[0][0]).max()) < 0.05  # resampling error only
    assert float(np.abs(geo[0] - x[0]).max()) > 1.0
    with pytest.raises(InputError, match="geometric_only=True"):
        p.invert(pred, state)


def test_pipeline_2d_with_crop_and_resize_from_metadata():
    x = _smooth(SHAPE_2D)
    p = Pipeline(steps=(Resize(target_pixel_size=(0.5, 0.5)), CropToMultiple(multiple=8)))
    ps = {"y": 0.25, "x": 0.25}
    y, state = p.apply(x, pixel_sizes=ps)
    # factor 0.25 / 0.5 = 0.5: (101, 73) -> (51, 37) -> crop to multiples of 8 -> (48, 32)
    assert y.shape == (2, 48, 32) and p.output_shape((101, 73), pixel_sizes=ps) == (48, 32)
    back = p.invert(y, state)
    assert back.shape == x.shape
    # the cropped border (<= 3 px at half resolution) is edge-filled; compare inside it
    assert float(np.abs(back[:, 8:-8, 8:-8] - x[:, 8:-8, 8:-8]).max()) < 0.01


def test_pipeline_state_mismatch():
    p = Pipeline.from_json([{"name": "pad_to_multiple"}])
    y, state = p.apply(_random(SHAPE_2D))
    with pytest.raises(InputError, match="does not belong"):
        Pipeline().invert(y, state)
    with pytest.raises(InputError, match=r"spatial shape \(100, 80\) differs"):
        p.invert(y[:, :100], state)


def test_invert_with_wrong_info():
    y, info = Normalize().apply(_random(SHAPE_2D))
    with pytest.raises(InputError, match="cannot invert 'pad_to_multiple'"):
        PadToMultiple().invert(y, info)


# ----------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("t", ALL_TRANSFORMS + [Pipeline(steps=(Normalize(),))], ids=lambda t: type(t).__name__)
def test_input_validation(t):
    with pytest.raises(InputError, match=r"got shape \(5, 5\)"):
        t.apply(np.ones((5, 5), np.float32))
    with pytest.raises(InputError, match=r"got shape \(1, 1, 2, 2, 2\)"):
        t.apply(np.ones((1, 1, 2, 2, 2), np.float32))
    x = _random((1, 20, 18, 17))
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 2, 3] = np.inf
    with pytest.raises(InputError, match="contains 2 NaN/Inf values"):
        t.apply(x)


def test_constant_channel():
    x = _random(SHAPE_2D)
    x[1] = 7.0
    with pytest.raises(InputError, match="channel 1 is constant"):
        Normalize().apply(x)
    with pytest.raises(InputError, match="channel 0 is constant"):
        NormAroundCenter().apply(np.full((1, 40, 4, 4), 3.0))


def test_output_is_float32():
    x = (np.arange(2 * 20 * 18) % 251).astype(np.uint16).reshape(2, 20, 18)
    for t in ALL_TRANSFORMS:
        if isinstance(t, NormAroundCenter) or (isinstance(t, Resize) and len(t.zoom) == 3):
            continue
        assert t.apply(x)[0].dtype == np.float32
    assert Resize(zoom=(0.5, 0.5)).apply(x)[0].dtype == np.float32


# ----------------------------------------------------------------------------- JSON and validation


@pytest.mark.parametrize("t", ALL_TRANSFORMS + [Resize(target_pixel_size=(0.3, 0.3)), Clip()], ids=repr)
def test_transform_json_round_trip(t):
    d = json.loads(json.dumps(t.to_dict()))
    assert d["name"] == t.name
    t2 = transform_from_dict(d)
    assert t2 == t and type(t2) is type(t)
    assert t2.to_dict() == t.to_dict()


def test_pipeline_json_round_trip():
    p = Pipeline(steps=tuple(ALL_TRANSFORMS))
    j = json.loads(json.dumps(p.to_json()))
    p2 = Pipeline.from_json(j)
    assert p2 == p
    assert p2.to_json() == p.to_json() == j
    assert Pipeline.from_json([]) == Pipeline()


def test_registry():
    assert set(TRANSFORM_REGISTRY) == {
        "normalize",
        "norm_around_center",
        "resize",
        "pad_to_multiple",
        "crop_to_multiple",
        "clip",
        "normalize_percentile",  # issue 16
    }
    assert not Normalize.is_geometric and not NormAroundCenter.is_geometric and not Clip.is_geometric
    assert Resize.is_geometric and PadToMultiple.is_geometric and CropToMultiple.is_geometric


@pytest.mark.parametrize(
    "d,msg",
    [
        ({"name": "blur"}, "unknown transform 'blur'; known transforms: clip, crop_to_multiple, norm_around_center"),
        ({"multiple": 16}, "has no 'name'"),
        ({"name": "normalize", "per_dim": 0}, "unknown parameter 'per_dim'"),
        ({"name": "pad_to_multiple", "multple": 16}, "unknown parameter 'multple'.*multiple, mode, axes"),
        ({"name": "pad_to_multiple", "multiple": 0}, "multiple: Input should be greater than or equal to 1"),
        ({"name": "pad_to_multiple", "multiple": "16"}, "multiple: Input should be a valid integer"),
        ({"name": "pad_to_multiple", "mode": "wrap"}, "mode: Input should be 'reflect', 'edge' or 'constant'"),
        ({"name": "pad_to_multiple", "axes": ["q"]}, "axes"),
        ({"name": "crop_to_multiple", "multiple": True}, "multiple: Input should be a valid integer"),
        ({"name": "resize"}, "give zoom, or target_pixel_size"),
        ({"name": "resize", "zoom": [1, 0.5], "target_pixel_size": [1, 1]}, "not both"),
        ({"name": "resize", "zoom": [1, -0.5]}, "zoom values must be positive"),
        ({"name": "resize", "zoom": [1, 0.5, 0.5, 1]}, "zoom needs 2 \\(YX\\) or 3 \\(ZYX\\) values; got 4"),
        ({"name": "resize", "zoom": [1, 0.5], "order": 7}, "order: Input should be less than or equal to 5"),
        ({"name": "resize", "source_pixel_size": [1, 1]}, "source_pixel_size given without target_pixel_size"),
        (
            {"name": "resize", "source_pixel_size": [1, 1, 1], "target_pixel_size": [1, 1]},
            "different lengths",
        ),
        ({"name": "norm_around_center", "n_slices": 0}, "n_slices: Input should be greater than or equal to 1"),
        ({"name": "norm_around_center", "fallback": "ignore"}, "fallback: Input should be 'whole' or 'error'"),
        ({"name": "clip", "low": 5, "high": 1}, "low \\(5.0\\) must not exceed high \\(1.0\\)"),
    ],
)
def test_strict_validation(d, msg):
    with pytest.raises(ConfigError, match=msg):
        transform_from_dict(d)


def test_pipeline_from_json_errors():
    with pytest.raises(ConfigError, match="transform #1: unknown transform 'nope'"):
        Pipeline.from_json([{"name": "normalize"}, {"name": "nope"}])
    with pytest.raises(ConfigError, match="must be a list"):
        Pipeline.from_json({"name": "normalize"})
    with pytest.raises(ConfigError, match="must be a dict"):
        Pipeline.from_json(["normalize"])


def test_transforms_are_frozen():
    t = PadToMultiple()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        t.multiple = 8  # type: ignore[misc]
    assert t.multiple == 16


def test_inverse_info_is_frozen():
    _, info = PadToMultiple().apply(_random(SHAPE_2D))
    assert isinstance(info, InverseInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.shape_in = (1, 1)  # type: ignore[misc]
