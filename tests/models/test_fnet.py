"""The fnet U-Net: parameter count, parity with an independent PyTorch reference, conversion."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import traverse_util

from labelfree_jax.compat.convert import network_config_from_checkpoint, state_dict_to_variables
from labelfree_jax.inference.model import Model
from labelfree_jax.models import ops
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import build_network, count_parameters, init_variables, random_variables
from labelfree_jax.models.package import unflatten_variables
from tests.torch_fnet import Net, randomize_bn_stats, weights_init


def test_default_3d_net_has_the_papers_parameter_count():
    shapes = jax.eval_shape(lambda: init_variables(NetworkConfig()))
    assert count_parameters(shapes["params"]) == 23_280_769
    torch_count = sum(p.numel() for p in Net().parameters())
    assert torch_count == 23_280_769


def test_init_statistics_follow_the_original():
    cfg = NetworkConfig(ndim=2, depth=2, mult_chan=16)
    v = init_variables(cfg, 3)
    k = np.asarray(v["params"]["net_recurse"]["sub_u"]["sub_2conv_more"]["conv1"]["kernel"])
    assert abs(k.std() - 0.02) < 0.002 and abs(k.mean()) < 0.002
    bn = v["params"]["net_recurse"]["sub_2conv_more"]["bn1"]
    assert abs(np.asarray(bn["scale"]).mean() - 1.0) < 0.01 and np.all(np.asarray(bn["bias"]) == 0)


def test_random_variables_match_the_flax_initialiser():
    net = NetworkConfig(ndim=3, depth=2, mult_chan=4, in_channels=2)
    ours = traverse_util.flatten_dict(random_variables(net, seed=1), sep="/")
    theirs = traverse_util.flatten_dict(jax.eval_shape(lambda: init_variables(net, 0)), sep="/")
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(v.dtype == np.float32 for v in ours.values())
    kernels = np.concatenate([v.ravel() for k, v in ours.items() if k.endswith("kernel")])
    assert kernels.std() == pytest.approx(0.02, rel=0.05) and abs(kernels.mean()) < 2e-3
    scales = np.concatenate([v.ravel() for k, v in ours.items() if k.endswith("scale")])
    assert scales.mean() == pytest.approx(1.0, abs=0.01) and scales.std() < 0.03
    # PyTorch's bias bound 1/sqrt(fan_in): first conv C_in=2 * 3**3, transposed conv C_out=8 * 2**3
    b1 = ours["params/net_recurse/sub_2conv_more/conv1/bias"]
    assert np.abs(b1).max() <= 1 / math.sqrt(2 * 27) and np.abs(b1).max() > 0.5 / math.sqrt(2 * 27)
    bt = ours["params/net_recurse/sub_u/convt/bias"]
    assert np.abs(bt).max() <= 1 / math.sqrt(16 * 8)
    assert np.all(ours["params/net_recurse/sub_2conv_more/bn1/bias"] == 0)
    assert np.all(ours["batch_stats/net_recurse/sub_2conv_more/bn1/var"] == 1)
    again = traverse_util.flatten_dict(random_variables(net, seed=1), sep="/")
    other = traverse_util.flatten_dict(random_variables(net, seed=2), sep="/")
    assert all(np.array_equal(again[k], ours[k]) for k in ours)
    assert not np.array_equal(other["params/conv_out/kernel"], ours["params/conv_out/kernel"])


def _parity(torch_net: torch.nn.Module, x: np.ndarray, ndim: int) -> float:
    gen = torch.Generator().manual_seed(1)
    torch_net.apply(weights_init)
    randomize_bn_stats(torch_net, gen)
    torch_net.eval()
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    flat = state_dict_to_variables(torch_net.state_dict())
    checkpoint = {"nn_module": f"fnet_nn_{ndim}d", "nn_kwargs": {}}
    config = network_config_from_checkpoint(checkpoint, flat)
    from labelfree_jax.models.config import PackageConfig

    model = Model(PackageConfig(network=config), unflatten_variables(flat))
    got = np.stack([model.apply(xi) for xi in x])
    assert got.shape == expected.shape
    return float(np.max(np.abs(got - expected)))


def test_parity_3d_default_net_with_pytorch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 16, 32, 48)).astype(np.float32)
    diff = _parity(Net(depth=4, mult_chan=32, in_channels=1, out_channels=1, ndim=3), x, 3)
    print(f"3D parity max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_parity_2d_multichannel_net_with_pytorch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 48)).astype(np.float32)
    diff = _parity(Net(depth=4, mult_chan=8, in_channels=3, out_channels=2, ndim=2), x, 2)
    print(f"2D parity max abs diff {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("ndim", [2, 3])
def test_strided_ops_match_xla_convolutions(ndim):
    rng = np.random.default_rng(ndim)
    spatial = (4, 6, 8)[-ndim:]
    x = jnp.asarray(rng.standard_normal((2, *spatial, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2,) * ndim + (3, 5)), jnp.float32)
    sp = "DHW"[-ndim:]
    dn = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    ref_down = jax.lax.conv_general_dilated(x, k, (2,) * ndim, "VALID", dimension_numbers=dn)
    np.testing.assert_allclose(ops.conv_down2(x, k), ref_down, atol=1e-5)
    # lax.conv_transpose (transpose_kernel=False) correlates with the kernel as given, so a
    # spatially flipped kernel gives PyTorch's ConvTranspose: out[2i + a] = x[i] @ k[a].
    k_flipped = jnp.flip(k, axis=tuple(range(ndim)))
    ref_up = jax.lax.conv_transpose(x, k_flipped, (2,) * ndim, "VALID", dimension_numbers=dn)
    np.testing.assert_allclose(ops.conv_up2(x, k), ref_up, atol=1e-5)


def test_network_rejects_wrong_rank():
    cfg = NetworkConfig(ndim=2, depth=1, mult_chan=2)
    with pytest.raises(ValueError, match="expected"):
        build_network(cfg).init(jax.random.key(0), jnp.zeros((1, 4, 4, 4, 1)))
