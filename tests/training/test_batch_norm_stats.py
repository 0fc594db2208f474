"""BatchNorm statistics measured for the EMA weights (labelfree_jax.training.batch_norm_stats)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from labelfree_jax.inference.model import load_package
from labelfree_jax.models.networks import build_network, init_variables
from labelfree_jax.training import ArrayDataset, RunConfig, init_train_state, train
from labelfree_jax.training.batch_norm_stats import BatchNormRecalibration, batch_statistics

TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}


def _shifted(tree, amount):
    return jax.tree_util.tree_map(lambda a: a + amount, tree)


def test_eval_mode_with_measured_statistics_equals_training_mode_on_that_batch():
    # BatchNorm in training mode normalises with the batch's own statistics; in eval mode with the stored
    # ones. Statistics measured on a batch must therefore make eval mode reproduce training mode exactly.
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4})
    variables = init_variables(cfg.model, 0)
    params = _shifted(variables["params"], 0.05)  # weights unlike the ones the stored statistics came from
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 1, 16, 16)).astype(np.float32)
    stats = batch_statistics(params, variables["batch_stats"], x, network=cfg.model, compute_dtype="float32")
    net = build_network(cfg.model)
    xl = jnp.moveaxis(x, 1, -1)
    trained, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, xl, train=True,
                           mutable=["batch_stats"])
    measured = net.apply({"params": params, "batch_stats": stats}, xl, train=False)
    stale = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, xl, train=False)
    np.testing.assert_allclose(np.asarray(measured), np.asarray(trained), rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(stale - trained))) > 1e-2  # the stored statistics alone do not


def test_recalibration_averages_batches_and_leaves_other_states_alone():
    rng = np.random.default_rng(1)
    pairs = [(rng.normal(size=(1, 24, 24)).astype(np.float32), rng.normal(size=(1, 24, 24)).astype(np.float32))]
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 2,
                               "ema": {"decay": 0.9, "batch_norm_patches": 4}})
    recal = BatchNormRecalibration(ArrayDataset(pairs), cfg)
    assert recal.signal.shape == (4, 1, 16, 16)
    state = init_train_state(cfg)
    state["ema"] = {"params": _shifted(state["ema"]["params"], 0.03), "batch_stats": state["ema"]["batch_stats"]}
    out = recal(state)
    halves = [batch_statistics(state["ema"]["params"], state["ema"]["batch_stats"], recal.signal[i:i + 2],
                               network=cfg.model, compute_dtype="float32") for i in (0, 2)]
    want = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *halves)
    for got, exp in zip(jax.tree_util.tree_leaves(out["ema"]["batch_stats"]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-6)
    assert out["ema"]["params"] is state["ema"]["params"] and out["params"] is state["params"]
    # no EMA, or 0 patches: unchanged
    plain = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 2})
    raw = init_train_state(plain)
    assert BatchNormRecalibration(ArrayDataset(pairs), plain)(raw) is raw
    off = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 2,
                               "ema": {"decay": 0.9, "batch_norm_patches": 0}})
    assert BatchNormRecalibration(ArrayDataset(pairs), off)(state) is state


def test_the_exported_ema_package_carries_statistics_of_its_own_weights(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 32, 32)).astype(np.float32)
    ds = ArrayDataset([(x, 2 * x + 1)])
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 2, "steps": 3,
                               "validation_interval": 0, "ema": {"decay": 0.5, "batch_norm_patches": 4}})
    result = train(cfg, tmp_path / "run", train_dataset=ds, progress=False)
    model = load_package(result.package_dir)
    recal = BatchNormRecalibration(ds, cfg)
    params = model.variables["params"]
    want = [batch_statistics(params, model.variables["batch_stats"], recal.signal[i:i + 2], network=cfg.model,
                             compute_dtype="float32") for i in (0, 2)]
    want = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *want)
    for got, exp in zip(jax.tree_util.tree_leaves(model.variables["batch_stats"]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6)
