"""Convolution formulations (labelfree_jax.models.ops): equal to XLA's convolution, forward and gradients."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.models import ops
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import build_network, random_variables


def _lax_conv(x, k):
    """Independent reference: lax.conv_general_dilated, stride 1, 'SAME' zero padding, channels-last."""
    n = x.ndim - 2
    sp = "DHW"[-n:]
    return jax.lax.conv_general_dilated(x, k, (1,) * n, "SAME", dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"))


def _numpy_conv(x, k):
    """Direct sum over kernel taps in float64: out[v] = sum_t x_pad[v + t] @ k[t]."""
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    n = x.ndim - 2
    xp = np.pad(x, [(0, 0)] + [(s // 2, s // 2) for s in k.shape[:n]] + [(0, 0)])
    out = np.zeros(x.shape[:-1] + (k.shape[-1],))
    for t in itertools.product(*[range(s) for s in k.shape[:n]]):
        window = xp[(slice(None),) + tuple(slice(ti, ti + size) for ti, size in zip(t, x.shape[1:-1]))]
        out += window @ k[t]
    return out


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _value_and_grads(impl, x, k, g):
    y, vjp = jax.vjp(lambda x, k: ops.conv_same(x, k, impl), x, k)
    dx, dk = vjp(g)
    return y, dx, dk


def _assert_same(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(1.0, float(np.abs(want).max())))


def test_reference_equals_direct_numpy_sum():
    x3, k3 = _random((2, 4, 5, 6, 3), 0), _random((3, 3, 3, 3, 5), 1)
    _assert_same(ops.conv_same_reference(x3, k3), _numpy_conv(x3, k3))
    _assert_same(_lax_conv(x3, k3), _numpy_conv(x3, k3))
    x2, k2 = _random((2, 5, 7, 3), 2), _random((3, 3, 3, 5), 3)
    _assert_same(ops.conv_same_reference(x2, k2), _numpy_conv(x2, k2))


# odd channel counts, a single input channel, a single output channel; depth 5 with
# chunks of 1 and 2 slices (uneven last chunk) and the whole volume as one chunk
SHAPES = [((2, 5, 6, 7), 3, 5), ((2, 5, 4, 6), 1, 3), ((1, 5, 6, 4), 3, 1)]
CHUNKS = [1, 2 * 6 * 7, 10_000]


@pytest.mark.parametrize("forward", ops.FORWARD_FORMS)
@pytest.mark.parametrize("spatial, c_in, c_out", SHAPES)
def test_forward_formulations_and_their_autodiff_match_lax(forward, spatial, c_in, c_out):
    x, k, g = _random((*spatial, c_in), 0), _random((3, 3, 3, c_in, c_out), 1), _random((*spatial, c_out), 2)
    want = _value_and_grads("native", x, k, g)
    _assert_same(want[0], _lax_conv(x, k))
    got = jax.jit(lambda x, k, g: _value_and_grads(ops.ConvPlan(forward, forward, "autodiff"), x, k, g))(x, k, g)
    for a, b in zip(got, want):
        _assert_same(a, b)


@pytest.mark.parametrize("kernel_grad", [f for f in ops.KERNEL_GRAD_FORMS if f != "autodiff"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("spatial, c_in, c_out", SHAPES)
def test_custom_gradients_match_lax(kernel_grad, chunk, spatial, c_in, c_out):
    if kernel_grad != "slices" and chunk != CHUNKS[0]:
        pytest.skip("chunk_voxels only affects 'slices'")
    x, k, g = _random((*spatial, c_in), 3), _random((3, 3, 3, c_in, c_out), 4), _random((*spatial, c_out), 5)
    want = _value_and_grads("native", x, k, g)
    plan = ops.ConvPlan("depth_sum", "depth_out3", kernel_grad, chunk)
    got = jax.jit(lambda x, k, g: _value_and_grads(plan, x, k, g))(x, k, g)
    for a, b in zip(got, want):
        _assert_same(a, b)


@pytest.mark.parametrize("input_grad", ops.FORWARD_FORMS)
def test_every_input_gradient_formulation_matches_lax(input_grad):
    spatial, c_in, c_out = SHAPES[0]
    x, k, g = _random((*spatial, c_in), 6), _random((3, 3, 3, c_in, c_out), 7), _random((*spatial, c_out), 8)
    want = _value_and_grads("native", x, k, g)
    got = _value_and_grads(ops.ConvPlan("depth_concat", input_grad, "slices", 64), x, k, g)
    for a, b in zip(got, want):
        _assert_same(a, b)


@pytest.mark.parametrize("impl", ["auto", "cpu"])
def test_cpu_plan_of_every_default_net_layer_shape_class(impl):
    # the channel pairs of the default net's layers, on a tiny volume
    for c_in, c_out in [(1, 4), (4, 4), (8, 4), (4, 1), (65, 66)]:
        spatial = (2, 3, 4, 5)
        x, k, g = _random((*spatial, c_in), c_in), _random((3, 3, 3, c_in, c_out), c_out), _random((*spatial, c_out), 9)
        want = _value_and_grads("native", x, k, g)
        got = jax.jit(lambda x, k, g: _value_and_grads(impl, x, k, g))(x, k, g)
        for a, b in zip(got, want):
            _assert_same(a, b)


@pytest.mark.parametrize("impl", ["auto", "native", "cpu", ops.ConvPlan()])
def test_2d_inputs_use_the_native_2d_convolution(impl):
    x, k, g = _random((2, 5, 7, 3), 10), _random((3, 3, 3, 5), 11), _random((2, 5, 7, 5), 12)
    got = _value_and_grads(impl, x, k, g)
    want = jax.vjp(_lax_conv, x, k)
    _assert_same(got[0], want[0])
    for a, b in zip(got[1:], want[1](g)):
        _assert_same(a, b)


def _has_3d_convolution(impl) -> bool:
    """Whether the lowered program of conv_same(x 5D) contains a convolution on 5D operands."""
    x, k = jnp.zeros((1, 4, 4, 4, 2)), jnp.zeros((3, 3, 3, 2, 2))
    text = jax.jit(lambda x, k: ops.conv_same(x, k, impl)).lower(x, k).as_text()
    convs = [line for line in text.splitlines() if "convolution" in line]
    assert convs, "no convolution at all in the lowered program"
    return any("tensor<1x4x4x4x2xf32>" in line for line in convs)


def test_auto_is_native_off_cpu_and_rewritten_on_cpu(monkeypatch):
    monkeypatch.setenv("LABELFREE_ONEDNN", "0")  # the pure-XLA rewrite; oneDNN: tests/models/test_onednn_conv.py
    assert jax.default_backend() == "cpu"
    assert not _has_3d_convolution("auto")
    assert not _has_3d_convolution("cpu")
    assert _has_3d_convolution("native")
    monkeypatch.setattr(ops.jax, "default_backend", lambda: "gpu")
    assert _has_3d_convolution("auto")
    assert not _has_3d_convolution("cpu")  # explicit choice wins


def test_environment_variable_selects_the_implementation(monkeypatch):
    monkeypatch.setenv(ops.CONV_IMPL_ENV, "native")
    assert _has_3d_convolution(None)
    monkeypatch.setenv(ops.CONV_IMPL_ENV, "cpu")
    assert not _has_3d_convolution(None)
    monkeypatch.setenv(ops.CONV_IMPL_ENV, "fastest")
    with pytest.raises(ConfigError, match=ops.CONV_IMPL_ENV):
        _has_3d_convolution(None)
    with pytest.raises(ConfigError, match="impl argument"):
        _has_3d_convolution("fastest")


def test_plan_validation_and_rules():
    with pytest.raises(ConfigError, match="forward"):
        ops.ConvPlan(forward="winograd")
    with pytest.raises(ConfigError, match="kernel_grad"):
        ops.ConvPlan(kernel_grad="depth_sum")
    with pytest.raises(ConfigError, match="chunk_voxels"):
        ops.ConvPlan(chunk_voxels=0)
    first = ops.plan_conv((4, 32, 64, 64, 1), (3, 3, 3, 1, 32))
    assert (first.forward, first.kernel_grad) == ("broadcast", "stack_input")
    last = ops.plan_conv((4, 32, 64, 64, 32), (3, 3, 3, 32, 1))
    assert (last.forward, last.input_grad, last.kernel_grad) == ("depth_out3", "broadcast", "stack_output")
    narrow = ops.plan_conv((1, 32, 256, 256, 32), (3, 3, 3, 32, 32))
    assert (narrow.forward, narrow.input_grad) == ("depth_concat", "depth_out3")
    mixed = ops.plan_conv((4, 16, 32, 32, 128), (3, 3, 3, 128, 64))
    assert (mixed.forward, mixed.input_grad) == ("depth_out3", "depth_out3")
    deep = ops.plan_conv((4, 4, 8, 8, 256), (3, 3, 3, 256, 256))
    assert (deep.forward, deep.input_grad, deep.kernel_grad) == ("depth_sum", "depth_sum", "slices")


def test_network_gradients_equal_with_cpu_and_native_convolutions(monkeypatch):
    cfg = NetworkConfig(depth=1, mult_chan=4, in_channels=1, out_channels=2)
    net = build_network(cfg)
    variables = jax.tree_util.tree_map(jnp.asarray, random_variables(cfg, 0, kernels="he"))
    x, y = _random((2, 4, 8, 6, 1), 13), _random((2, 4, 8, 6, 2), 14)

    def loss(params):
        out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.mean((out - y) ** 2)

    grads = {}
    for impl in ("cpu", "native"):
        monkeypatch.setenv(ops.CONV_IMPL_ENV, impl)  # read when the function is traced
        grads[impl] = jax.tree_util.tree_leaves(jax.grad(loss)(variables["params"]))
    assert len(grads["cpu"]) == len(grads["native"]) > 10
    for a, b in zip(grads["cpu"], grads["native"]):
        _assert_same(a, b, rtol=1e-4)
