"""Tiling: plan geometry, blending weights, and exact reproduction of known functions."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelfree_jax.inference.tiling import (
    blend_weights,
    pad_to_plan,
    plan_tiles,
    predict_tiled,
    resolve_overlap,
    run_tiles,
)

U = 2.0**-24  # unit roundoff of float32


def blend_rtol(plan) -> float:
    """Relative error bound of ``sum(w_i * v) / sum(w_i)`` in float32 for a voxel value ``v``.

    Each of the ``k`` weighted products and each accumulation rounds once (relative error
    <= u), the weight sum accumulates ``k`` roundings, the division one: the result is ``v``
    within ``(2k + 1) u`` to first order; ``(2k + 2) u`` covers the second-order terms. It is
    not exactly ``v`` because e.g. ``fl(fl(w v) / w)`` can differ from ``v`` by one ulp.
    """
    return (2 * plan.max_coverage() + 2) * U


# ------------------------------------------------------------------------------------------
# plan geometry
# ------------------------------------------------------------------------------------------
CASES = [
    ((101, 73), (32, 32), 8, 1),
    ((101, 73), (48, 16), (0.25, 0), 1),
    ((37, 101, 73), (32, 48, 48), 0.25, 16),
    ((37, 101, 73), (48, 32, 32), (16, 8, 8), (16, 8, 8)),
    ((5, 33, 21), (16, 32, 32), 4, 16),  # smaller than the tile along Z and X
    ((1, 1, 200), (4, 4, 64), (0, 0, 32), 4),
    ((300,), (64,), 48, 16),
    ((17, 9, 5, 64), (8, 8, 8, 8), 2, 1),  # 4 spatial axes
]


@pytest.mark.parametrize("shape, tile, overlap, align", CASES)
def test_plan_covers_everything_with_flush_ends(shape, tile, overlap, align):
    plan = plan_tiles(shape, tile, overlap, align=align)
    aligns = (align,) * len(shape) if isinstance(align, int) else align
    ov = resolve_overlap(plan.tile_shape, overlap)
    assert plan.overlap == ov
    cover = np.zeros(plan.padded_shape, np.int32)
    for sl in plan.tile_slices():
        cover[sl] += 1
    assert cover.min() >= 1, "some voxel is not covered"
    assert cover.max() == plan.max_coverage()
    assert len(list(plan.tile_slices())) == plan.n_tiles == math.prod(plan.grid) == len(plan)
    for axis, (starts, t, p, s, a, o) in enumerate(
        zip(plan.starts, plan.tile_shape, plan.padded_shape, shape, aligns, ov)
    ):
        assert p >= max(t, s) and p % a == 0 and p - s == sum(plan.pad[axis])
        assert plan.pad[axis][0] <= plan.pad[axis][1] <= plan.pad[axis][0] + 1  # split evenly
        assert starts[0] == 0 and starts[-1] == p - t, "first tile at 0, last flush with the end"
        assert all(0 <= st <= p - t and st % a == 0 for st in starts)
        assert list(starts) == sorted(set(starts))
        for a0, a1 in itertools.pairwise(starts):
            assert a0 + t - a1 >= o, f"neighbours overlap less than {o} on axis {axis}"
        # no more tiles than needed: dropping any interior tile would leave a gap or too little overlap
        if len(starts) > 2:
            assert any(starts[k + 1] - starts[k - 1] > t - o for k in range(1, len(starts) - 1))
    # the crop takes the original region back
    x = np.arange(math.prod(shape), dtype=np.float32).reshape((1,) + shape)
    np.testing.assert_array_equal(pad_to_plan(x, plan)[(slice(None),) + plan.crop], x)


def test_plan_random_shapes_invariants():
    rng = np.random.default_rng(0)
    for _ in range(200):
        nd = int(rng.integers(1, 4))
        align = int(rng.choice([1, 2, 4, 16]))
        tile = tuple(int(align * rng.integers(1, 6)) for _ in range(nd))
        shape = tuple(int(rng.integers(1, 130)) for _ in range(nd))
        overlap = tuple(int(rng.integers(0, t - align + 1)) for t in tile)
        plan = plan_tiles(shape, tile, overlap, align=align)
        for starts, t, p, o in zip(plan.starts, plan.tile_shape, plan.padded_shape, overlap):
            assert starts[0] == 0 and starts[-1] + t == p
            assert all(b - a <= t - o and (b - a) % align == 0 for a, b in itertools.pairwise(starts))


def test_plan_padding_modes_fall_back_for_short_axes():
    plan = plan_tiles((5, 3, 1, 40), (16, 8, 8, 32), 0)
    assert plan.pad == ((5, 6), (2, 3), (3, 4), (0, 0))
    # side 5, pad 6 > 5 -> edge; side 3, pad 3 > 2 but <= 3 -> symmetric; side 1 -> edge
    assert plan.pad_modes == ("edge", "symmetric", "edge", "reflect")
    plan = plan_tiles((12, 40), (16, 32), 0)
    assert plan.pad == ((2, 2), (0, 0)) and plan.pad_modes[0] == "reflect"
    x = np.arange(12, dtype=np.float32)[None, :, None] * np.ones((1, 12, 40), np.float32)
    xp = pad_to_plan(x, plan)
    np.testing.assert_array_equal(xp[0, :, 0], [2, 1] + list(range(12)) + [10, 9])


def test_plan_aligned_padding_of_long_axes():
    plan = plan_tiles((37, 101), (32, 48), 16, align=16)
    assert plan.padded_shape == (48, 112)
    assert all(s % 16 == 0 for starts in plan.starts for s in starts)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (10, 10), "tile_shape": (0, 4)}, "tile side must be >= 1"),
        ({"shape": (10, 10), "tile_shape": (4, 4), "overlap": 4}, "smaller than the tile side"),
        ({"shape": (10, 10), "tile_shape": (4, 4), "overlap": -1}, ">= 0"),
        ({"shape": (10, 10), "tile_shape": (4, 4), "overlap": 1.5}, r"whole voxels or a fraction in \[0, 1\)"),
        ({"shape": (10, 10), "tile_shape": (4, 4, 4)}, "3 entries, the array has 2 spatial axes"),
        ({"shape": (10, 0), "tile_shape": (4, 4)}, "every spatial side must be >= 1"),
        ({"shape": (10, 10), "tile_shape": (6, 8), "align": 4}, "not a multiple of align"),
        ({"shape": (20, 10), "tile_shape": (8, 8), "overlap": 6, "align": 4}, "step smaller than align"),
        ({"shape": (10, 10), "tile_shape": (8, 8), "pad_mode": "wrap"}, "pad_mode"),
    ],
)
def test_plan_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_tiles(**kwargs)


def test_resolve_overlap_fraction_and_voxels():
    assert resolve_overlap((32, 256, 256), 0.25) == (8, 64, 64)
    assert resolve_overlap((32, 256, 256), (16, 64, 0.5)) == (16, 64, 128)
    assert resolve_overlap((32, 256), None) == (0, 0)
    assert resolve_overlap((32, 256), [24]) == (24, 24)
    assert resolve_overlap((32, 256), 16.0) == (16, 16)  # JSON configs give floats


# ------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "triangular", "uniform"])
@pytest.mark.parametrize("tile, overlap", [((32, 48), (8, 16)), ((16, 64, 40), (6, 16, 0)), ((7,), (3,))])
def test_weights_positive_symmetric_tapering(kind, tile, overlap):
    w = blend_weights(tile, overlap, kind)
    assert w.shape == tile and w.dtype == np.float32
    assert np.all(w > 0) and np.all(np.isfinite(w)) and w.max() <= 1.0
    for axis in range(len(tile)):
        np.testing.assert_array_equal(w, np.flip(w, axis))
        # along every axis: non-decreasing from the border to the middle
        half = np.moveaxis(w, axis, 0)[: (tile[axis] + 1) // 2]
        assert np.all(np.diff(half, axis=0) >= 0)
    centre = w[tuple(t // 2 for t in tile)]
    assert centre == 1.0  # the interior (farther than the overlap from every border) has weight 1
    if kind == "uniform":
        assert np.all(w == 1)
    else:
        border = w[(0,) * len(tile)]
        assert border < 0.2


def test_gaussian_profile_values():
    w = blend_weights((64,), (16,), "gaussian").astype(np.float64)
    d = np.arange(16) + 0.5
    np.testing.assert_allclose(w[:16], np.exp(-0.5 * ((16 - d) / (16 / 5)) ** 2), rtol=1e-6)
    assert np.all(w[16:48] == 1)
    t = blend_weights((64,), (16,), "triangular")
    np.testing.assert_allclose(t[:16], d / 16, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# running: exact reproduction of known functions
# ------------------------------------------------------------------------------------------
def plus_one(b):
    return b + 1


def times_two(b):
    return 2 * b


def three_channels(b):
    return np.concatenate([b + 1, 2 * b, b * b], axis=1)


EXACT_CASES = [
    # (array shape, tile, overlap, batch_size, align)
    ((1, 101, 73), (32, 32), 8, 1, 1),
    ((1, 101, 73), (48, 96), (16, 0.25), 3, 16),  # X smaller than the tile: padded
    ((1, 37, 101, 73), (32, 48, 48), 0.25, 4, 16),
    ((1, 37, 101, 73), (48, 32, 32), (8, 8, 8), 5, 1),  # Z smaller than the tile
    ((2, 5, 33, 21), (16, 32, 32), 4, 2, 16),  # smaller than the tile in Z and X, 2 channels
]


@pytest.mark.parametrize("blend", ["gaussian", "triangular", "uniform"])
@pytest.mark.parametrize("shape, tile, overlap, batch_size, align", EXACT_CASES)
def test_tiler_reproduces_known_functions(shape, tile, overlap, batch_size, align, blend):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    plan = plan_tiles(shape[1:], tile, overlap, align=align)
    assert plan.n_tiles > 1
    rtol = blend_rtol(plan)
    for fn, expected in [
        (plus_one, x + 1),
        (times_two, 2 * x),
        (three_channels, np.concatenate([x + 1, 2 * x, x * x])),
    ]:
        y = predict_tiled(
            fn, x, tile_shape=tile, overlap=overlap, batch_size=batch_size, blend=blend, align=align, progress=False
        )
        assert y.shape == expected.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, expected, rtol=rtol, atol=0)


def test_uniform_non_overlapping_tiles_are_bitwise_exact():
    x = np.random.default_rng(2).standard_normal((1, 64, 96)).astype(np.float32)
    y = predict_tiled(three_channels, x, tile_shape=(32, 32), overlap=0, blend="uniform", progress=False)
    np.testing.assert_array_equal(y, np.concatenate([x + 1, 2 * x, x * x]))


def test_fixed_batch_shape_and_partial_last_batch():
    x = np.random.default_rng(3).standard_normal((1, 37, 101, 73)).astype(np.float32)
    plan = plan_tiles(x.shape[1:], (32, 48, 48), 0.25, align=16)
    seen = []

    def fn(b):
        seen.append(b.shape)
        return b * 3

    batch_size = 5
    assert plan.n_tiles % batch_size != 0, "the case must end with a partial batch"
    y = run_tiles(fn, x, plan, batch_size=batch_size, weights=blend_weights(plan.tile_shape, plan.overlap), progress=False)
    assert seen == [(batch_size, 1) + plan.tile_shape] * math.ceil(plan.n_tiles / batch_size)
    np.testing.assert_allclose(y, 3 * x, rtol=blend_rtol(plan), atol=0)


def test_jitted_function_compiles_once():
    traces = []

    @jax.jit
    def fn(b):
        traces.append(b.shape)
        return jnp.concatenate([b + 1, b - 1], axis=1)

    x = np.random.default_rng(4).standard_normal((1, 90, 50)).astype(np.float32)
    plan = plan_tiles(x.shape[1:], (32, 32), 8)
    assert plan.n_tiles % 3
    y = run_tiles(fn, x, plan, batch_size=3, weights=blend_weights((32, 32), 8), progress=False)
    assert traces == [(3, 1, 32, 32)]
    np.testing.assert_allclose(y, np.concatenate([x + 1, x - 1]), rtol=blend_rtol(plan), atol=0)


def test_run_tiles_rejects_bad_outputs_and_weights():
    x = np.zeros((1, 40, 40), np.float32)
    plan = plan_tiles((40, 40), (16, 16), 4)
    with pytest.raises(ValueError, match="fn returned shape"):
        run_tiles(lambda b: b[:, :, :8], x, plan, progress=False)
    with pytest.raises(ValueError, match="strictly positive"):
        run_tiles(plus_one, x, plan, weights=np.zeros((16, 16), np.float32), progress=False)
    with pytest.raises(ValueError, match="tile shape"):
        run_tiles(plus_one, x, plan, weights=np.ones((8, 8), np.float32), progress=False)
    with pytest.raises(ValueError, match="does not match the plan"):
        run_tiles(plus_one, np.zeros((1, 41, 40), np.float32), plan, progress=False)


def test_blending_averages_overlapping_tiles_by_weight():
    """A function whose output depends on the tile (its start) is blended as sum(w f) / sum(w)."""
    x = np.zeros((1, 48), np.float32)
    plan = plan_tiles((48,), (32,), 16)
    assert plan.starts == ((0, 16),)
    calls = itertools.count()

    def fn(b):  # first tile returns 0, second returns 1
        return np.full_like(b, float(next(calls)))

    w = blend_weights((32,), 16, "triangular").astype(np.float64)
    y = run_tiles(fn, x, plan, batch_size=1, weights=w.astype(np.float32), progress=False)[0]
    expected = np.concatenate([np.zeros(16), w[:16] / (w[16:] + w[:16]), np.ones(16)])
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_tile_sides_on_the_volume_border_are_not_tapered():
    w = blend_weights((32,), 16, "triangular", taper=[(False, True)])
    assert np.all(w[:16] == 1) and w[-1] == np.float32(0.5 / 16)
    x = np.zeros((1, 48), np.float32)
    plan = plan_tiles((48,), (32,), 16)
    calls = itertools.count()

    def fn(b):  # first tile returns 0, second returns 1
        return np.full_like(b, float(next(calls)))

    y = run_tiles(fn, x, plan, batch_size=1, weights="triangular", progress=False)[0]
    w0 = blend_weights((32,), 16, "triangular", taper=[(False, True)]).astype(np.float64)[16:]
    w1 = blend_weights((32,), 16, "triangular", taper=[(True, False)]).astype(np.float64)[:16]
    np.testing.assert_allclose(y, np.concatenate([np.zeros(16), w1 / (w0 + w1), np.ones(16)]), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="blend must be one of"):
        run_tiles(fn, x, plan, weights="cosine", progress=False)
