"""oneDNN convolutions (labelfree_jax.models.onednn) against lax.conv_general_dilated, and their dispatch in ops.

Skipped (with the reason) only when the oneDNN v3 package or a C++ compiler is absent; when
both are there, the library must build and load. Reference: XLA's native convolution in
float32 (bf16 cases: of the same bf16-rounded inputs, tolerance one bf16 rounding,
``2**-8 * max|ref|``, as tests/models/test_conv_formulations_bf16.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.models import onednn, ops
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import build_network, random_variables
from labelfree_jax.models.onednn import build
from labelfree_jax.training.step import train_step

BF16 = jnp.bfloat16
ONE_ROUNDING = 2.0**-8
F32_TOL = 1e-5


def _missing() -> str:
    paths, reason = build.find_onednn()
    if paths is None:
        return reason
    compiler, reason = build.find_compiler()
    return "" if compiler else reason


MISSING = _missing()
needs_onednn = pytest.mark.skipif(bool(MISSING), reason=f"oneDNN convolutions cannot be built here: {MISSING}")


@pytest.fixture(autouse=True)
def _onednn_on(monkeypatch):
    monkeypatch.delenv(onednn.ONEDNN_ENV, raising=False)
    monkeypatch.delenv(ops.CONV_IMPL_ENV, raising=False)


def _lax_conv(x, k):
    n = x.ndim - 2
    sp = "DHW"[-n:]
    pad = [(s // 2, s // 2) for s in k.shape[:n]]
    return jax.lax.conv_general_dilated(x, k, (1,) * n, pad, dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"))


def _random(shape, seed, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32).astype(dtype)


def _value_and_grads(fn, x, k, g):
    y, vjp = jax.vjp(fn, x, k)
    return (y, *vjp(g))


def _assert_close(got, want, tol):
    got, want = np.asarray(got.astype(jnp.float32)), np.asarray(want, np.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, float(np.abs(want).max())))


@needs_onednn
def test_library_builds_loads_and_is_used():
    assert onednn.available(), onednn.unavailable_reason()
    assert onednn.unavailable_reason() == ""
    x, k = jnp.zeros((1, 3, 4, 5, 2)), jnp.zeros((3, 3, 3, 2, 3))
    text = jax.jit(lambda x, k: ops.conv_same(x, k)).lower(x, k).as_text()
    assert "labelfree_onednn_conv_fwd" in text and "convolution" not in text


# (x shape without channels, kernel sides, C_in, C_out): odd sizes, one and several channels, 2D and 3D
CASES = [
    ((2, 5, 6, 7), (3, 3, 3), 3, 5),
    ((1, 4, 6, 5), (3, 3, 3), 4, 1),
    ((2, 4, 5, 6), (3, 3, 3), 1, 3),
    ((1, 3, 5, 4), (1, 3, 3), 2, 2),
    ((2, 9, 7), (3, 3), 3, 4),
    ((1, 6, 5), (5, 3), 1, 2),
]


@needs_onednn
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("spatial, ksize, c_in, c_out", CASES)
def test_forward_and_gradients_match_lax(spatial, ksize, c_in, c_out, dtype):
    dtype = jnp.dtype(dtype)
    seed = sum(spatial) + c_in + 10 * c_out
    x, k = _random((*spatial, c_in), seed, dtype), _random((*ksize, c_in, c_out), seed + 1, dtype)
    g = _random((*spatial, c_out), seed + 2, dtype)
    want = _value_and_grads(_lax_conv, *(a.astype(jnp.float32) for a in (x, k, g)))
    got = jax.jit(lambda x, k, g: _value_and_grads(onednn.conv_same_onednn, x, k, g))(x, k, g)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        _assert_close(a, b, F32_TOL if dtype == jnp.float32 else ONE_ROUNDING)


@needs_onednn
def test_bf16_activations_with_float32_kernel_give_a_float32_kernel_gradient():
    x, k, g = _random((1, 4, 5, 6, 3), 0, BF16), _random((3, 3, 3, 3, 2), 1), _random((1, 4, 5, 6, 2), 2, BF16)
    y, dx, dk = jax.jit(lambda x, k, g: _value_and_grads(onednn.conv_same_onednn, x, k, g))(x, k, g)
    assert (y.dtype, dx.dtype, dk.dtype) == (BF16, BF16, jnp.float32)
    want = _value_and_grads(_lax_conv, x.astype(jnp.float32), k.astype(BF16).astype(jnp.float32),
                            g.astype(jnp.float32))
    for a, b in zip((y, dx, dk), want):
        _assert_close(a, b, ONE_ROUNDING)


@needs_onednn
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_auto_plans_with_onednn_passes_match_lax(dtype):
    dtype = jnp.dtype(dtype)
    # the channel classes of the net (first, middle, last layer); one volume above the
    # kernel-gradient threshold, so every oneDNN pass of plan_conv(..., use_onednn=True) runs
    for i, (c_in, c_out) in enumerate([(1, 4), (4, 4), (8, 4), (4, 1)]):
        spatial = (2, 4, 8, 9)
        x, k = _random((*spatial, c_in), i, dtype), _random((3, 3, 3, c_in, c_out), i + 1, dtype)
        g = _random((*spatial, c_out), i + 2, dtype)
        want = _value_and_grads(_lax_conv, *(a.astype(jnp.float32) for a in (x, k, g)))
        got = jax.jit(lambda x, k, g: _value_and_grads(lambda x, k: ops.conv_same(x, k, "auto"), x, k, g))(x, k, g)
        for a, b in zip(got, want):
            _assert_close(a, b, F32_TOL if dtype == jnp.float32 else ONE_ROUNDING)


def test_plan_rules_with_onednn():
    # float32: oneDNN except the forward to one channel and the input gradient into one channel
    first = ops.plan_conv((4, 32, 64, 64, 1), (3, 3, 3, 1, 32), use_onednn=True)
    assert (first.forward, first.input_grad, first.kernel_grad) == ("onednn", "depth_out3", "onednn")
    last = ops.plan_conv((4, 32, 64, 64, 32), (3, 3, 3, 32, 1), use_onednn=True)
    assert (last.forward, last.input_grad, last.kernel_grad) == ("depth_out3", "onednn", "onednn")
    # bf16: oneDNN in every pass; tiny volumes keep XLA's kernel gradient
    for c_in, c_out in [(1, 32), (32, 32), (32, 1)]:
        plan = ops.plan_conv((4, 32, 64, 64, c_in), (3, 3, 3, c_in, c_out), BF16, use_onednn=True)
        assert (plan.forward, plan.input_grad, plan.kernel_grad) == ("onednn", "onednn", "onednn")
    deep = ops.plan_conv((4, 2, 4, 4, 512), (3, 3, 3, 512, 512), BF16, use_onednn=True)
    assert (deep.forward, deep.input_grad, deep.kernel_grad) == ("onednn", "onednn", "slices")
    assert ops.plan_conv((1, 8, 16, 16, 32), (3, 3, 3, 32, 32), BF16) == ops.plan_conv(
        (1, 8, 16, 16, 32), (3, 3, 3, 32, 32), BF16, use_onednn=False)


def _lowered(impl, x, k):
    return jax.jit(lambda x, k: ops.conv_same(x, k, impl)).lower(x, k).as_text()


@needs_onednn
def test_environment_variable_turns_onednn_off(monkeypatch):
    x3, k3 = jnp.zeros((1, 4, 4, 4, 2)), jnp.zeros((3, 3, 3, 2, 2))
    x2, k2 = jnp.zeros((1, 4, 4, 2), BF16), jnp.zeros((3, 3, 2, 2), BF16)
    assert "labelfree_onednn" in _lowered("auto", x3, k3) and "labelfree_onednn" in _lowered("auto", x2, k2)
    monkeypatch.setenv(onednn.ONEDNN_ENV, "0")
    off3, off2 = _lowered("auto", x3, k3), _lowered("auto", x2, k2)
    assert "labelfree_onednn" not in off3 and "labelfree_onednn" not in off2
    assert "convolution" in off3 and "convolution" in off2  # the XLA plan (2D convolutions), XLA's native one
    # an explicit request still gets oneDNN; "cpu" and plans without oneDNN never do
    assert "labelfree_onednn" in _lowered("onednn", x3, k3)
    monkeypatch.delenv(onednn.ONEDNN_ENV)
    assert "labelfree_onednn" not in _lowered("cpu", x3, k3)


def test_unavailable_library_falls_back_or_raises(monkeypatch):
    monkeypatch.setattr(build, "load", lambda: (None, "no oneDNN in this test"))
    x, k = _random((1, 3, 4, 5, 2), 0), _random((3, 3, 3, 2, 3), 1)
    assert not onednn.available() and not onednn.use_onednn()
    assert "labelfree_onednn" not in _lowered("auto", x, k)
    with pytest.raises(ConfigError, match="no oneDNN in this test"):
        ops.conv_same(x, k, "onednn")
    with pytest.raises(InputError, match="unsupported"):
        onednn.conv_same_onednn(x.astype(jnp.float16), k)


def _smooth(shape, seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(np.cumsum(rng.standard_normal(shape), axis=2), axis=3)
    return jnp.asarray((x - x.mean()) / x.std(), jnp.float32)


@needs_onednn
@pytest.mark.parametrize("dtype", [None, BF16])
def test_tiny_fnet_forward_equal_with_onednn_on_and_off(monkeypatch, dtype):
    cfg = NetworkConfig(depth=2, mult_chan=4, in_channels=1, out_channels=1)
    variables = jax.tree_util.tree_map(jnp.asarray, random_variables(cfg, 0, kernels="he"))
    x = _smooth((1, 8, 16, 16, 1), 3)
    net = build_network(cfg, dtype=dtype)
    out = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(onednn.ONEDNN_ENV, setting)  # read when traced: a new function each time
        out[setting] = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x), np.float32)
    scale = float(np.abs(out["0"]).max())
    # float32: summation order only; bf16: both round every layer's output once, differently
    tol = 1e-4 if dtype is None else 0.05
    np.testing.assert_allclose(out["1"], out["0"], rtol=0, atol=tol * scale)


@needs_onednn
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_step_with_donated_state_equal_with_onednn_on_and_off(monkeypatch, compute_dtype):
    cfg = NetworkConfig(depth=1, mult_chan=4, in_channels=1, out_channels=1)
    variables = random_variables(cfg, 0, kernels="he")
    tx = optax.sgd(0.1)
    signal, target = np.moveaxis(_smooth((2, 4, 8, 8, 1), 1), -1, 1), np.moveaxis(_smooth((2, 4, 8, 8, 1), 2), -1, 1)
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(onednn.ONEDNN_ENV, setting)
        params = jax.tree_util.tree_map(jnp.array, variables["params"])
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "batch_stats": jax.tree_util.tree_map(jnp.array, variables["batch_stats"]), "opt_state": tx.init(params)}
        step = jax.jit(lambda s, x, y: train_step(s, x, y, None, network=cfg, compute_dtype=compute_dtype, tx=tx,
                                                  loss="mse"), donate_argnums=0)
        text = step.lower(state, signal, target).as_text()
        assert ("labelfree_onednn_conv_bwd_weights" in text) == (setting == "1")
        losses = []
        for _ in range(2):
            state, loss = step(state, signal, target)
            losses.append(float(loss))
        results[setting] = (losses, jax.tree_util.tree_leaves(state["params"]))
    tol = 1e-4 if compute_dtype == "float32" else 0.03
    np.testing.assert_allclose(results["1"][0], results["0"][0], rtol=tol)
    for a, b in zip(results["1"][1], results["0"][1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol * max(1.0, float(np.abs(b).max())))


@needs_onednn
def test_library_builds_atomically_when_two_processes_race(tmp_path):
    paths, _ = build.find_onednn()
    compiler, _ = build.find_compiler()
    out = tmp_path / "race" / "conv.so"
    code = textwrap.dedent(f"""
        from pathlib import Path
        from labelfree_jax.models.onednn import build
        paths, _ = build.find_onednn()
        compiler, _ = build.find_compiler()
        print(build.build_library(paths, compiler, Path({str(out)!r}), {jax.ffi.include_dir()!r}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    seconds = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        seconds.append(float(stdout.split()[-1]))
    assert sorted(s == 0.0 for s in seconds) == [False, True]  # one built, the other found it built
    assert [p.name for p in out.parent.iterdir() if ".tmp-" in p.name] == []
    import ctypes

    lib = ctypes.CDLL(str(out))
    assert all(hasattr(lib, symbol) for symbol in build.TARGETS.values())
    assert paths is not None and compiler is not None


def test_import_builds_and_registers_nothing():
    code = textwrap.dedent("""
        import labelfree_jax.models.ops, labelfree_jax.models.fnet
        from labelfree_jax.models.onednn import build
        maps = open("/proc/self/maps").read()
        print(len(build._result), "libdnnl" in maps)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["0", "False"]


def test_find_onednn_explains_a_missing_installation(monkeypatch, tmp_path):
    monkeypatch.setenv(build.ROOT_ENV, str(tmp_path))
    paths, reason = build.find_onednn()
    assert paths is None and str(tmp_path) in reason and "onednn-cpu-gomp" in reason
