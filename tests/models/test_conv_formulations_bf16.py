"""bf16 convolution formulations (labelfree_jax.models.ops) against lax.conv_general_dilated in float32.

Reference: XLA's native convolution in float32 of the *same bf16-rounded* inputs, so the
only error left is the formulation's own rounding. bf16 keeps 8 significant bits: rounding a
result once costs at most 2**-9 of its magnitude, so a formulation that accumulates in
float32 and rounds once stays within ``2**-8 * max|ref|`` (``ONE_ROUNDING``). The older
formulations sum the depth taps in bf16 (three roundings); they get ``2**-6 * max|ref|``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelfree_jax.evaluation.metrics import pearson_r
from labelfree_jax.models import ops
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import build_network, random_variables

BF16 = jnp.bfloat16
ONE_ROUNDING = 2.0**-8
SEVERAL_ROUNDINGS = 2.0**-6


def _lax_conv(x, k):
    """Independent reference: lax.conv_general_dilated, stride 1, 'SAME' zero padding, channels-last 3D."""
    return jax.lax.conv_general_dilated(x, k, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _bf16_random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32).astype(BF16)


def _value_and_grads(fn, x, k, g):
    y, vjp = jax.vjp(fn, x, k)
    return (y, *vjp(g))


def _reference(x, k, g):
    f32 = [a.astype(jnp.float32) for a in (x, k, g)]
    return _value_and_grads(_lax_conv, *f32)


def _assert_close(got, want, tol):
    got, want = np.asarray(got.astype(jnp.float32)), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * float(np.abs(want).max()))


SHAPES = [((2, 5, 6, 7), 3, 5), ((1, 4, 6, 5), 4, 1), ((2, 4, 5, 6), 1, 3)]


@pytest.mark.parametrize("spatial, c_in, c_out", SHAPES)
def test_im2col_hw_in_bf16_rounds_once_forward_and_gradients(spatial, c_in, c_out):
    x, k, g = (
        _bf16_random((*spatial, c_in), 0),
        _bf16_random((3, 3, 3, c_in, c_out), 1),
        _bf16_random((*spatial, c_out), 2),
    )
    want = _reference(x, k, g)
    plan = ops.ConvPlan("im2col_hw", "im2col_hw", "im2col_hw")
    got = jax.jit(lambda x, k, g: _value_and_grads(lambda x, k: ops.conv_same(x, k, plan), x, k, g))(x, k, g)
    for a, b in zip(got, want):
        assert a.dtype == BF16
        _assert_close(a, b, ONE_ROUNDING)


@pytest.mark.parametrize("forward", [f for f in ops.FORWARD_FORMS if f != "im2col_hw"])
def test_other_forward_formulations_in_bf16(forward):
    spatial, c_in, c_out = SHAPES[0] if forward != "broadcast" else SHAPES[2]
    x, k, g = (
        _bf16_random((*spatial, c_in), 3),
        _bf16_random((3, 3, 3, c_in, c_out), 4),
        _bf16_random((*spatial, c_out), 5),
    )
    want = _reference(x, k, g)
    plan = ops.ConvPlan(forward, forward, "autodiff")
    got = jax.jit(lambda x, k, g: _value_and_grads(lambda x, k: ops.conv_same(x, k, plan), x, k, g))(x, k, g)
    # broadcast's autodiff kernel gradient reduces over every voxel in bf16 (no plan uses it:
    # one input channel takes 'stack_input'), so only its value and input gradient are bounded
    n = 2 if forward == "broadcast" else 3
    for a, b in zip(got[:n], want[:n]):
        _assert_close(a, b, SEVERAL_ROUNDINGS)


@pytest.mark.parametrize("c_in, c_out", [(1, 4), (4, 4), (8, 4), (4, 1)])
def test_bf16_plan_of_every_layer_shape_class(c_in, c_out):
    spatial = (2, 3, 4, 5)
    # chunk_voxels below the volume: the 'slices' kernel gradient sums several chunks
    plan = ops.plan_conv((*spatial, c_in), (3, 3, 3, c_in, c_out), BF16)
    plan = ops.ConvPlan(plan.forward, plan.input_grad, plan.kernel_grad, 20)
    x, k, g = (
        _bf16_random((*spatial, c_in), c_in),
        _bf16_random((3, 3, 3, c_in, c_out), c_out),
        _bf16_random((*spatial, c_out), 9),
    )
    want = _reference(x, k, g)
    got = jax.jit(lambda x, k, g: _value_and_grads(lambda x, k: ops.conv_same(x, k, plan), x, k, g))(x, k, g)
    for a, b in zip(got, want):
        _assert_close(a, b, ONE_ROUNDING)


def test_bf16_plan_rules_and_float32_plans_unchanged():
    for c_in, c_out in [(32, 32), (64, 128), (512, 512)]:
        plan = ops.plan_conv((1, 8, 16, 16, c_in), (3, 3, 3, c_in, c_out), BF16)
        assert (plan.forward, plan.input_grad, plan.kernel_grad) == ("im2col_hw", "im2col_hw", "slices")
        assert ops.plan_conv((1, 8, 16, 16, c_in), (3, 3, 3, c_in, c_out)).forward != "im2col_hw"
    first = ops.plan_conv((4, 32, 64, 64, 1), (3, 3, 3, 1, 32), BF16)
    assert (first.forward, first.input_grad, first.kernel_grad) == ("broadcast", "im2col_hw", "stack_input")
    last = ops.plan_conv((4, 32, 64, 64, 32), (3, 3, 3, 32, 1), BF16)
    assert (last.forward, last.input_grad, last.kernel_grad) == ("im2col_hw", "broadcast", "stack_output")


def test_bf16_auto_path_is_a_bf16_matmul_with_float32_accumulation():
    # what reaches the CPU's bf16 dot units: a dot_general on bf16 operands with an f32 result,
    # and no convolution left (XLA:CPU would convert a bf16 convolution to f32)
    x, k = jnp.zeros((1, 4, 6, 6, 8), BF16), jnp.zeros((3, 3, 3, 8, 8), BF16)
    text = jax.jit(lambda x, k: ops.conv_same(x, k, "cpu")).lower(x, k).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert any("bf16>" in line.split("->")[0] and "xf32>" in line.split("->")[-1] for line in dots), dots
    assert "convolution" not in text


def test_bf16_network_prediction_correlates_with_float32():
    cfg = NetworkConfig(depth=2, mult_chan=8, in_channels=1, out_channels=1)
    variables = jax.tree_util.tree_map(jnp.asarray, random_variables(cfg, 0, kernels="he"))
    rng = np.random.default_rng(7)
    # a smooth volume (not white noise), like a microscope image
    x = np.cumsum(np.cumsum(rng.standard_normal((1, 8, 16, 16, 1)), axis=2), axis=3)
    x = jnp.asarray((x - x.mean()) / x.std(), jnp.float32)
    out = {}
    for dtype in (None, BF16):
        net = build_network(cfg, dtype=dtype)
        out[dtype] = np.asarray(jax.jit(lambda v, x, net=net: net.apply(v, x, train=False))(variables, x))
    assert out[BF16].dtype == np.float32
    assert pearson_r(out[BF16].ravel(), out[None].ravel()) >= 0.999
