"""The ConvNeXt U-Net (architecture "unext"): config, shapes, gradients, equivariance, PyTorch parity, package, training."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.core.schema import parse_model
from labelfree_jax.inference.model import Model, load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.networks import build_network, init_variables, random_variables, variable_shapes
from labelfree_jax.models.unext import depthwise_same

TINY = {
    "2d": NetworkConfig(architecture="unext", ndim=2, depth=2, base_channels=8, unext={"encoder_blocks": [1, 2, 1]}),
    "3d": NetworkConfig(architecture="unext", ndim=3, depth=2, base_channels=8, in_channels=2, out_channels=2,
                        unext={"kernel_size": 5}),
    "2.5d": NetworkConfig(architecture="unext", ndim=2, depth=2, base_channels=8, in_channels=10,
                          unext={"stack_depth": 5, "stem_kernel_z": 3, "kernel_size": 5}),
}


def _input(net: NetworkConfig, side: int, seed: int = 0) -> np.ndarray:
    """Channels-last ``(1, *spatial, C_in)`` (Z side half of Y, X in 3D)."""
    spatial = (side // 2, side, side) if net.ndim == 3 else (side, side)
    return np.random.default_rng(seed).normal(size=(1, *spatial, net.in_channels)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    net = TINY[request.param]
    variables = jax.tree_util.tree_map(jnp.asarray, random_variables(net, 0, kernels="he"))
    apply = jax.jit(lambda v, x: build_network(net).apply(v, x))
    return net, variables, apply


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_variable_count_matches_the_built_network_and_there_are_no_batch_stats(name):
    net = TINY[name]
    shapes = variable_shapes(net)
    assert net.variable_count() == sum(math.prod(s) for s in shapes.values())
    assert all(k.startswith("params/") for k in shapes)
    flax_init = traverse_util.flatten_dict(jax.eval_shape(lambda: init_variables(net, 0)), sep="/")
    assert {k: tuple(v.shape) for k, v in flax_init.items()} == shapes


def test_fnet_config_json_is_unchanged_and_unext_round_trips():
    fnet = NetworkConfig(ndim=2, depth=3, mult_chan=8)
    assert json.loads(fnet.model_dump_json()) == {"ndim": 2, "depth": 3, "mult_chan": 8, "in_channels": 1,
                                                  "out_channels": 1, "base_channels": None}
    assert parse_model(NetworkConfig, {"ndim": 2, "depth": 3, "mult_chan": 8}, source="x").architecture == "fnet"
    for net in TINY.values():
        text = PackageConfig(network=net).to_json()
        assert PackageConfig.from_json(text).network == net
        assert "mult_chan" not in json.loads(text)["network"]
    default = parse_model(NetworkConfig, {"architecture": "unext", "ndim": 2}, source="x")
    assert default.first_channels == 32 and default.unext.kernel_size == 7 and default.channels == (32, 64, 128, 256, 512)


@pytest.mark.parametrize(("network", "message"), [
    ({"unext": {"kernel_size": 5}}, 'architecture is "fnet"'),
    ({"architecture": "unext", "mult_chan": 8}, "takes base_channels"),
    ({"architecture": "unext", "ndim": 3, "unext": {"stack_depth": 5}}, "needs ndim 2"),
    ({"architecture": "unext", "ndim": 2, "in_channels": 7, "unext": {"stack_depth": 5}}, "not a multiple"),
    ({"architecture": "unext", "ndim": 2, "in_channels": 5, "unext": {"stack_depth": 5, "stem_kernel_z": 7}},
     "stem_kernel_z 7 > stack_depth 5"),
    ({"architecture": "unext", "depth": 2, "unext": {"encoder_blocks": [1, 1]}}, "has 3 levels"),
    ({"architecture": "unext", "unext": {"kernel_size": 6}}, "must be odd"),
    ({"architecture": "unext", "base_channels": 10**5}, "GiB of float32 weights"),
])
def test_bad_unext_configs_are_refused(network, message):
    with pytest.raises(ConfigError, match=message):
        parse_model(PackageConfig, {"network": network}, source="config.json")


def test_receptive_radius_closed_form():
    # stem 1 + encoder blocks 3 * (1 + 2*2 + 4) + decoder (3 + 1) * (1 + 2)
    assert TINY["2d"].receptive_radius() == (1 + 3 * (1 + 4 + 4) + 4 * 3,) * 2
    assert TINY["3d"].receptive_radius() == (1 + 1 * 7 + 2 * 3, 1 + 2 * 7 + 3 * 3, 1 + 2 * 7 + 3 * 3)
    assert NetworkConfig(depth=4).receptive_radius() == (108, 108, 108)  # fnet: diameter 217 (~200 voxels)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
def test_depthwise_matches_lax_grouped_convolution():
    rng = np.random.default_rng(1)
    for shape, k in (((2, 9, 11, 3), (7, 7)), ((1, 5, 8, 6, 4), (3, 5, 5))):
        x = rng.normal(size=shape).astype(np.float32)
        kernel = rng.normal(size=k + (1, shape[-1])).astype(np.float32)
        sp = "DHW"[-len(k):]
        ref = jax.lax.conv_general_dilated(x, kernel, (1,) * len(k), [(s // 2, s // 2) for s in k],
                                           dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
                                           feature_group_count=shape[-1])
        np.testing.assert_allclose(depthwise_same(jnp.asarray(x), jnp.asarray(kernel)), ref, rtol=1e-5, atol=1e-5)


def test_output_shapes(tiny):
    net, variables, apply = tiny
    x = _input(net, 16)
    y = apply(variables, x)
    assert y.shape == x.shape[:-1] + (net.out_channels,) and y.dtype == jnp.float32
    assert np.all(np.isfinite(y)) and float(jnp.std(y)) > 1e-3
    bf16 = jax.jit(build_network(net, dtype=jnp.bfloat16).apply)(variables, x)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, y, atol=0.1 * float(jnp.std(y)) + 0.05)


def test_gradients_are_finite_and_nonzero_for_every_parameter(tiny):
    net, variables, _ = tiny
    x = jnp.asarray(_input(net, 8))
    target = jnp.asarray(np.random.default_rng(3).normal(size=x.shape[:-1] + (net.out_channels,)), jnp.float32)

    def loss(params):
        return jnp.mean((build_network(net).apply({"params": params}, x, train=True) - target) ** 2)

    grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(variables["params"]), sep="/")
    assert set(grads) == {k[len("params/"):] for k in variable_shapes(net)}
    for name, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        assert np.abs(g).max() > 0, name


def test_shift_equivariance_at_the_alignment_multiple(tiny):
    net, variables, apply = tiny
    m, radius = net.size_multiple, net.receptive_radius()
    sides = [2 * r + m + 8 + (-(2 * r + m + 8)) % m for r in radius]  # room for an interior beyond the radius
    x = np.random.default_rng(4).normal(size=(1, *sides, net.in_channels)).astype(np.float32)
    axes = tuple(range(1, 1 + net.ndim))
    y = np.asarray(apply(variables, x))
    ys = np.asarray(apply(variables, np.roll(x, m, axis=axes)))
    # away from the borders (and the wrapped-around strip) by the receptive radius: out(shift x) = shift out(x)
    core = tuple(slice(r, s - r - m) for r, s in zip(radius, sides))
    moved = tuple(slice(c.start + m, c.stop + m) for c in core)
    assert y[(0, *core)].size > 0
    np.testing.assert_allclose(ys[(0, *moved)], y[(0, *core)], rtol=1e-4, atol=1e-4 * float(np.abs(y).max()))
    # a shift by half the multiple is not an equivariance of the U-Net
    yh = np.asarray(apply(variables, np.roll(x, m // 2, axis=axes)))
    half = tuple(slice(c.start + m // 2, c.stop + m // 2) for c in core)
    assert np.abs(yh[(0, *half)] - y[(0, *core)]).max() > 1e-3 * float(np.abs(y).max())


def test_the_receptive_radius_bounds_what_an_output_voxel_sees():
    net = TINY["2d"]
    variables = random_variables(net, 1, kernels="he")
    apply = jax.jit(lambda v, x: build_network(net).apply(v, x))
    r = net.receptive_radius()[0]
    side = 2 * r + 12
    side += -side % net.size_multiple
    x = _input(net, side, seed=5)
    c = side // 2
    y = float(np.asarray(apply(variables, x))[0, c, c, 0])
    far, near = x.copy(), x.copy()
    far[0, c - r - 1, :] += 100.0  # a whole row just outside the radius
    near[0, c - r // 2, c] += 1.0
    assert float(np.asarray(apply(variables, far))[0, c, c, 0]) == pytest.approx(y, abs=1e-5 * (1 + abs(y)))
    assert abs(float(np.asarray(apply(variables, near))[0, c, c, 0]) - y) > 1e-6


@pytest.mark.parametrize("name", sorted(TINY))
def test_parity_with_an_independent_pytorch_reference(name):
    torch = pytest.importorskip("torch")
    from tests.torch_unext import UNeXtReference, load_flax_params

    net = TINY[name]
    opts = net.unext
    ref = UNeXtReference(ndim=net.ndim, depth=net.depth, base=net.first_channels, c_in=net.in_channels,
                         c_out=net.out_channels, enc=net.encoder_blocks, dec=net.decoder_blocks, k=opts.kernel_size,
                         kz=opts.kernel_size_z, ratio=opts.mlp_ratio, stack_depth=opts.stack_depth,
                         stem_kz=opts.stem_kernel_z)
    variables = random_variables(net, 2, kernels="he")
    load_flax_params(ref, variables["params"])
    n_torch = sum(p.numel() for p in ref.parameters())
    assert n_torch == net.variable_count()
    x = _input(net, 16, seed=6)
    ours = np.asarray(build_network(net).apply(variables, jnp.asarray(x)))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    np.testing.assert_allclose(ours, np.moveaxis(theirs, 1, -1), rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


# --------------------------------------------------------------------------------------------
# package and training
# --------------------------------------------------------------------------------------------
def test_package_save_load_gives_the_same_prediction(tmp_path):
    net = TINY["2.5d"]
    model = Model(PackageConfig(name="tiny-unext", network=net), random_variables(net, 3, kernels="he"))
    x = np.random.default_rng(7).normal(size=(net.in_channels, 20, 28)).astype(np.float32)
    expected = model.predict(x, progress=False)
    model.save(tmp_path / "pkg")
    loaded = load_package(tmp_path / "pkg")
    assert loaded.config == model.config and set(loaded.variables) == {"params"}
    np.testing.assert_array_equal(loaded.predict(x, progress=False), expected)
    assert expected.shape == (1, 20, 28)


def test_one_jitted_train_step_with_unext():
    from labelfree_jax.training import RunConfig, init_train_state, make_optimizer
    from labelfree_jax.training.step import jit_train_step

    net = NetworkConfig(architecture="unext", ndim=2, depth=2, base_channels=8, unext={"kernel_size": 3})
    cfg = RunConfig(model=net, patch_shape=(16, 16), batch_size=2)
    state = init_train_state(cfg)
    assert state["batch_stats"] == {}
    before = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), state)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    y = np.tanh(x)
    pred = build_network(cfg.model).apply({"params": before["params"]}, jnp.moveaxis(x, 1, -1))
    expected = float(np.mean((np.moveaxis(np.asarray(pred), -1, 1) - y) ** 2))
    tx = make_optimizer(cfg.optimizer, cfg.schedule, cfg.steps)
    new, loss = jit_train_step(state, jnp.asarray(x), jnp.asarray(y), None, network=cfg.model,
                               compute_dtype="float32", tx=tx, loss="mse")
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    after = jax.device_get(new)
    assert int(after["step"]) == 1 and after["batch_stats"] == {}
    flat_b = traverse_util.flatten_dict(before["params"], sep="/")
    flat_a = traverse_util.flatten_dict(after["params"], sep="/")
    assert [k for k in flat_b if np.array_equal(flat_b[k], flat_a[k])] == []  # Adam moves every parameter


def test_the_model_card_names_the_architecture():
    from labelfree_jax.models.card import render_model_card

    fnet = render_model_card(PackageConfig(name="f", network=NetworkConfig(ndim=2, depth=2, mult_chan=4)))
    assert "* pytorch_fnet U-Net, 2D" in fnet and "ConvNeXt" not in fnet
    stack = NetworkConfig.model_validate({"architecture": "unext", "ndim": 2, "depth": 2, "in_channels": 6,
                                          "base_channels": 8, "unext": {"stack_depth": 3}})
    card = render_model_card(PackageConfig(name="u", network=stack))
    assert "* ConvNeXt U-Net (unext, 2.5D: 3 z-planes in), 2D" in card and "pytorch_fnet" not in card
    assert "- convnext" in card and "- fnet" not in card
