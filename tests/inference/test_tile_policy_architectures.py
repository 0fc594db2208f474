"""Tile policy per architecture: alignment, halo, overlap, memory, and seamless tiling of the ConvNeXt U-Net."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelfree_jax.inference.model import Model
from labelfree_jax.inference.tile_policy import (
    default_overlap,
    estimate_memory_bytes,
    halo,
    resolve_tile_overlap,
    seam_weights,
    size_multiple,
)
from labelfree_jax.inference.tiling import plan_tiles, run_tiles
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.networks import build_network, random_variables

UNEXT_2D = NetworkConfig(architecture="unext", ndim=2, depth=2, base_channels=8, unext={"kernel_size": 5})
UNEXT_3D = NetworkConfig(architecture="unext", ndim=3, depth=1, base_channels=8, unext={"kernel_size": 5})


def test_each_architecture_declares_its_alignment_and_halo():
    fnet = NetworkConfig(ndim=2, depth=3, mult_chan=4)
    assert size_multiple(fnet) == 8 and size_multiple(UNEXT_2D) == 4 and size_multiple(UNEXT_3D) == 2
    # fnet depth 3: two k3 convs per level (2 * 15), per decoder level up + two convs (3 * 7), the k3 output conv
    assert halo(fnet) == (2 * 15 + 3 * 7 + 1,) * 2
    # unext: stem 1 + one k5 block per level (2 * 7) + per decoder level (2 + 1) * 3
    assert halo(UNEXT_2D) == (1 + 2 * 7 + 3 * 3,) * 2
    assert halo(UNEXT_3D) == (1 + 1 * 3 + 2 * 1, 1 + 2 * 3 + 3 * 1, 1 + 2 * 3 + 3 * 1)


def test_default_overlap_covers_the_halo_when_given():
    assert default_overlap((256, 256), (1000, 1000), 8) == (64, 64)  # fnet's measured default, unchanged
    assert default_overlap((256, 256), (1000, 1000), 8, halo=(40, 20)) == (80, 64)
    assert default_overlap((96, 256), (1000, 1000), 8, halo=(70, 70)) == (48, 128)  # capped at tile // 2
    assert default_overlap((256, 256), (200, 1000), 8, halo=(40, 40)) == (0, 80)  # one tile covers the axis
    assert resolve_tile_overlap(None, (256, 256), (1000, 1000), 8, halo=(40, 40)) == (80, 80)
    assert resolve_tile_overlap(10, (256, 256), (1000, 1000), 8, halo=(40, 40)) == (10, 10)


def test_seam_weights():
    w = seam_weights((8, 10), (2, 3))
    assert w.shape == (8, 10) and w.dtype == np.float32
    assert np.all(w[2:6, 3:7] == 1)
    assert w[1, 5] == pytest.approx(1e-9) and w[0, 0] == pytest.approx(1e-18)
    with pytest.raises(ValueError, match="one non-negative number per tile axis"):
        seam_weights((8, 10), (2,))


def test_unext_memory_estimate_uses_its_own_factor():
    fnet = NetworkConfig(ndim=2, depth=2, base_channels=8)
    assert estimate_memory_bytes(UNEXT_2D, (64, 64), backend="gpu") == int(4 * 64 * 64 * (48 * 8 + 4) * 1.25)
    assert estimate_memory_bytes(fnet, (64, 64), backend="gpu") == int(4 * 64 * 64 * (4 * 8 + 4) * 1.25)


@pytest.mark.parametrize("net", [UNEXT_2D, UNEXT_3D], ids=["2d", "3d"])
def test_tiled_prediction_equals_whole_prediction_with_the_declared_halo(net):
    variables = jax.tree_util.tree_map(jnp.asarray, random_variables(net, 0, kernels="he"))
    module = build_network(net)
    forward = jax.jit(lambda x: jnp.moveaxis(module.apply(variables, jnp.moveaxis(x, 1, -1)), -1, 1))
    m, h = size_multiple(net), halo(net)
    # tiles of 3 halos (so each cut side is a halo away from the volume border), overlap 2 halos + 1
    tile = tuple(3 * r + 1 + (-(3 * r + 1)) % m for r in h)
    overlap = tuple(2 * r + 1 for r in h)
    step = tuple((t - o) // m * m for t, o in zip(tile, overlap))
    shape = tuple(t + 2 * s for t, s in zip(tile, step))  # three tiles per axis
    x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    whole = np.asarray(forward(x[None]))[0]
    plan = plan_tiles(shape, tile, overlap, align=m)
    assert plan.grid == (3,) * net.ndim
    for starts, t, p, r in zip(plan.starts, tile, plan.padded_shape, h):  # seam_weights' condition
        assert starts[1] >= r and p - (starts[-2] + t) >= r
    seamless = run_tiles(forward, x, plan, weights=seam_weights(tile, h), progress=False)
    tiled = run_tiles(forward, x, plan, weights="uniform", progress=False)
    gaussian = run_tiles(forward, x, plan, weights="gaussian", progress=False)
    scale = float(np.abs(whole).max())
    np.testing.assert_allclose(seamless, whole, rtol=1e-5, atol=2e-6 * scale)
    # plain averaging (and, less so, Gaussian blending) mixes in the cut tile borders
    assert np.abs(tiled - whole).max() > 1e-3 * scale
    assert np.abs(gaussian - whole).max() < np.abs(tiled - whole).max()


def test_model_predict_with_the_default_overlap_is_close_to_whole():
    net = UNEXT_2D
    model = Model(PackageConfig(network=net), random_variables(net, 2, kernels="he"))
    x = np.random.default_rng(3).normal(size=(1, 100, 90)).astype(np.float32)
    whole = model.predict(x, tile_shape=(112, 96), progress=False)
    tiled = model.predict(x, tile_shape=(48, 48), overlap=tuple(2 * r for r in halo(net)), progress=False)
    assert np.abs(tiled - whole).max() < 0.05 * float(whole.std())
