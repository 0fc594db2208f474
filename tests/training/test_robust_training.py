"""Robust training options (issue 16): intensity augmentations, L1 + MS-SSIM, EMA, dataset percentiles, old configs.

Tiny networks and patches throughout; every check has an independent reference (numpy formulas,
scipy, ``pytorch_msssim``, the closed form of the moving average, digests and losses recorded with
the code before these options existed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.networks import build_network
from labelfree_jax.training import ArrayDataset, RunConfig, init_train_state, make_optimizer, train
from labelfree_jax.training.augment import (
    BlurAugmentation,
    ContrastAugmentation,
    GammaAugmentation,
    IntensityAugmentation,
    NoiseAugmentation,
    ScaleShiftAugmentation,
    augment_signal,
)
from labelfree_jax.training.config import MixedLoss
from labelfree_jax.training.loader import PatchLoader
from labelfree_jax.training.losses import l1_ms_ssim_loss, ms_ssim as _ms_ssim
from labelfree_jax.training.percentiles import dataset_percentiles, resolve_dataset_percentiles
from labelfree_jax.training.step import eval_variables, jit_train_step
from labelfree_jax.training.templates import KINDS, template_config

REPO = Path(__file__).resolve().parents[2]
TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}

# compiled (op-by-op dispatch of the unrolled windows is slow); the loss config is hashable, so static
ms_ssim = jax.jit(_ms_ssim, static_argnames="loss")
_mixed = jax.jit(l1_ms_ssim_loss, static_argnames="loss")
_mixed_grad = jax.jit(jax.grad(l1_ms_ssim_loss), static_argnames="loss")


def _patch(shape=(2, 96, 96), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    if shape[0] > 1:
        x[1] = 3.0 + 2.0 * x[1]
    return x


def _only(**kw) -> IntensityAugmentation:
    return IntensityAugmentation(**kw)


# --------------------------------------------------------------------------------------------
# intensity augmentations (numpy, one patch)
# --------------------------------------------------------------------------------------------
def test_identity_settings_change_nothing():
    x = _patch()
    rng = np.random.default_rng(0)
    ident = _only(gamma=GammaAugmentation(probability=1.0, range=(1.0, 1.0)),
                  contrast=ContrastAugmentation(probability=1.0, range=(1.0, 1.0)),
                  scale_shift=ScaleShiftAugmentation(probability=1.0, scale=(1.0, 1.0), shift=(0.0, 0.0)),
                  blur=BlurAugmentation(probability=1.0, sigma=(0.0, 0.0)),
                  noise=NoiseAugmentation(probability=1.0, sd=(0.0, 0.0)))
    np.testing.assert_allclose(augment_signal(x, ident, rng), x, rtol=1e-6, atol=1e-5)
    never = _only(gamma=GammaAugmentation(probability=0.0, range=(0.5, 2.0)),
                  noise=NoiseAugmentation(probability=0.0, sd=(1.0, 1.0)))
    np.testing.assert_array_equal(augment_signal(x, never, rng), x)


def test_each_augmentation_against_its_formula():
    x = _patch()
    rng = lambda: np.random.default_rng(5)
    # scale and shift: x * a + b with the drawn a, b
    y = augment_signal(x, _only(scale_shift=ScaleShiftAugmentation(probability=1.0, scale=(2.0, 2.0),
                                                                    shift=(-1.0, -1.0))), rng())
    np.testing.assert_allclose(y, 2 * x - 1, rtol=1e-6, atol=1e-5)
    # contrast: channel means kept, deviations scaled by the factor
    y = augment_signal(x, _only(contrast=ContrastAugmentation(probability=1.0, range=(0.5, 0.5))), rng())
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(1, 2)), 0.5 * x.std(axis=(1, 2)), rtol=1e-5)
    # gamma: the curve between each channel's minimum and maximum (which stay where they were)
    y = augment_signal(x, _only(gamma=GammaAugmentation(probability=1.0, range=(2.0, 2.0))), rng())
    for c in range(2):
        lo, hi = float(x[c].min()), float(x[c].max())
        np.testing.assert_allclose(y[c], lo + (hi - lo) * ((x[c] - lo) / (hi - lo)) ** 2, rtol=1e-5, atol=1e-5)
        assert (y[c].min(), y[c].max()) == pytest.approx((lo, hi), abs=1e-5)
    # blur: scipy's Gaussian per channel in y-x; the mean is kept (reflecting borders), the variance drops
    from scipy.ndimage import gaussian_filter

    y = augment_signal(x, _only(blur=BlurAugmentation(probability=1.0, sigma=(1.5, 1.5))), rng())
    for c in range(2):
        np.testing.assert_allclose(y[c], gaussian_filter(x[c], 1.5, mode="reflect"), rtol=1e-5, atol=1e-5)
        assert y[c].mean() == pytest.approx(x[c].mean(), abs=1e-5)
        assert y[c].std() < 0.5 * x[c].std()
    # noise: zero mean, the set standard deviation, independent of the signal
    y = augment_signal(x, _only(noise=NoiseAugmentation(probability=1.0, sd=(0.3, 0.3))), rng())
    d = (y - x).ravel()
    assert d.std() == pytest.approx(0.3, rel=0.02) and abs(d.mean()) < 0.01
    assert abs(np.corrcoef(d, x.ravel())[0, 1]) < 0.02


def test_blur_3d_in_plane_or_with_z():
    from scipy.ndimage import gaussian_filter

    x = _patch((1, 8, 24, 24), seed=2)
    rng = lambda: np.random.default_rng(1)
    y = augment_signal(x, _only(blur=BlurAugmentation(probability=1.0, sigma=(1.0, 1.0))), rng())
    np.testing.assert_allclose(y[0], gaussian_filter(x[0], (0, 1.0, 1.0), mode="reflect"), rtol=1e-5, atol=1e-5)
    y = augment_signal(x, _only(blur=BlurAugmentation(probability=1.0, sigma=(1.0, 1.0), include_z=True)), rng())
    np.testing.assert_allclose(y[0], gaussian_filter(x[0], 1.0, mode="reflect"), rtol=1e-5, atol=1e-5)


def test_probabilities_and_ranges_are_respected():
    x = _patch((1, 16, 16))
    cfg = _only(scale_shift=ScaleShiftAugmentation(probability=0.25, scale=(0.5, 1.5), shift=(0.0, 0.0)))
    scales, fired = [], 0
    for seed in range(800):
        y = augment_signal(x, cfg, np.random.default_rng(seed))
        a = float(np.median(y / x))
        if not np.allclose(y, x):
            fired += 1
            scales.append(a)
    assert fired / 800 == pytest.approx(0.25, abs=0.05)
    assert 0.5 <= min(scales) and max(scales) <= 1.5 and np.mean(scales) == pytest.approx(1.0, abs=0.06)


def test_augmentation_config_is_strict():
    with pytest.raises(ConfigError, match="low <= high"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16],
                             "augmentation": {"gamma": {"range": [1.5, 0.5]}}})
    with pytest.raises(ConfigError, match="positive"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "augmentation": {"gamma": {"range": [0, 1]}}})
    with pytest.raises(ConfigError, match="probability"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16],
                             "augmentation": {"noise": {"probability": 1.5}}})
    with pytest.raises(ConfigError, match="sigmas"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "augmentation": {"blur": {"sigmas": [1, 2]}}})


# --------------------------------------------------------------------------------------------
# the loader: signal only, deterministic, counter based
# --------------------------------------------------------------------------------------------
def _dataset(n=3, weights=True) -> ArrayDataset:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        s = rng.normal(size=(1, 40 + 4 * i, 44)).astype(np.float32)
        t = np.tanh(2 * s)
        pairs.append((s, t, rng.uniform(size=s.shape).astype(np.float32)) if weights else (s, t))
    return ArrayDataset(pairs)


_ALL_ON = {"flip": True, "rotate90": True,
           "scale_shift": {"probability": 0.5}, "contrast": {"probability": 0.5}, "gamma": {"probability": 0.5},
           "blur": {"probability": 0.5}, "noise": {"probability": 0.5, "sd": [0.05, 0.2]}}


def _batches(config: RunConfig, n=3, start=0):
    loader = PatchLoader(_dataset(), **{**config.loader_options().kwargs(), "prefetch": 0, "use_weights": True},
                         start_patch=start)
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def test_loader_augments_the_signal_only_and_deterministically():
    base = {"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "buffer_size": 2, "seed": 7}
    plain = RunConfig.from_json({**base, "augmentation": {"flip": True, "rotate90": True}})
    rich = RunConfig.from_json({**base, "augmentation": _ALL_ON})
    assert plain.loader_options().intensity is None and rich.loader_options().intensity is not None
    a, b, again = _batches(plain), _batches(rich), _batches(rich)
    for x, y, z in zip(a, b, again):
        np.testing.assert_array_equal(x.target, y.target)  # the same patches: target and weight untouched
        np.testing.assert_array_equal(x.weight, y.weight)
        np.testing.assert_array_equal(y.signal, z.signal)  # same seed, same augmentations
        assert y.signal.dtype == np.float32 and y.signal.shape == x.signal.shape
    changed = [not np.allclose(x.signal[r], y.signal[r]) for x, y in zip(a, b) for r in range(4)]
    assert 6 <= sum(changed) < 12  # five augmentations at p = 0.5 each: most patches change, rarely all
    # counter based: starting at patch 4 gives batch 1 again (what a resumed run sees)
    np.testing.assert_array_equal(_batches(rich, n=1, start=4)[0].signal, b[1].signal)
    other = _batches(RunConfig.from_json({**base, "seed": 8, "augmentation": _ALL_ON}), n=1)[0]
    assert not np.array_equal(other.signal, b[0].signal)


# --------------------------------------------------------------------------------------------
# MS-SSIM and the mixed loss
# --------------------------------------------------------------------------------------------
def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape).astype(np.float32)
    y = np.clip(x + 0.25 * rng.normal(size=shape), 0, 1).astype(np.float32)
    return x, y


def test_ms_ssim_equals_pytorch_msssim():
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pytorch_msssim")
    weights = (0.2, 0.3, 0.5)
    # 2D (odd sides exercise the pooling's padding); the reference wants sides > 16 * (window - 1)
    x, y = _pair((2, 3, 70, 81))
    loss = MixedLoss(window=3, weights=weights)
    ref = reference.ms_ssim(torch.tensor(x), torch.tensor(y), data_range=1.0, win_size=3, weights=list(weights))
    got = ms_ssim(jnp.moveaxis(x, 1, -1), jnp.moveaxis(y, 1, -1), loss=loss)
    assert float(got) == pytest.approx(float(ref), abs=2e-6)
    # 3D windows
    x, y = _pair((2, 1, 20, 37, 35), seed=1)
    ref = reference.ms_ssim(torch.tensor(x), torch.tensor(y), data_range=1.0, win_size=3, weights=list(weights))
    got = ms_ssim(jnp.moveaxis(x, 1, -1), jnp.moveaxis(y, 1, -1), loss=loss.model_copy(update={"axes": "volume"}))
    assert float(got) == pytest.approx(float(ref), abs=2e-6)
    # per plane: every z-plane a 2D image; another data range
    ref = reference.ms_ssim(torch.tensor(np.moveaxis(x, 2, 1).reshape(40, 1, 37, 35) * 4),
                            torch.tensor(np.moveaxis(y, 2, 1).reshape(40, 1, 37, 35) * 4), data_range=4.0,
                            win_size=3, weights=list(weights))
    got = ms_ssim(jnp.moveaxis(x, 1, -1) * 4, jnp.moveaxis(y, 1, -1) * 4,
                  loss=loss.model_copy(update={"data_range": 4.0}))
    assert float(got) == pytest.approx(float(ref), abs=2e-6)


def test_single_scale_equals_skimage_ssim_without_borders():
    from skimage.metrics import structural_similarity

    x, y = _pair((1, 1, 64, 64), seed=3)
    got = float(ms_ssim(jnp.moveaxis(x, 1, -1), jnp.moveaxis(y, 1, -1), loss=MixedLoss(weights=(1.0,))))
    # skimage's Gaussian SSIM (11 taps, sigma 1.5) averages over the positions 5 pixels from the border,
    # where the window needs no padding: exactly the "valid" positions
    ref = structural_similarity(x[0, 0], y[0, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0)
    assert got == pytest.approx(float(ref), abs=1e-5)


def test_mixed_loss_value_and_finite_gradients():
    loss = MixedLoss(window=5, weights=(0.3, 0.7), l1_weight=0.25, ms_ssim_weight=0.75, data_range=4.0)
    rng = np.random.default_rng(4)
    t = jnp.asarray(rng.normal(size=(2, 24, 24, 1)), jnp.float32)  # z-scored: negative means, terms at the floor
    p = jnp.asarray(rng.normal(size=(2, 24, 24, 1)), jnp.float32)
    value = float(_mixed(p, t, loss=loss))
    expected = 0.25 * float(jnp.mean(jnp.abs(p - t))) + 0.75 * (1 - float(ms_ssim(p, t, loss=loss)))
    assert value == pytest.approx(expected, rel=1e-6)
    assert float(_mixed(t, t, loss=loss)) == pytest.approx(0.0, abs=1e-6)  # MS-SSIM(t, t) = 1
    for pred in (p, t + 1e-3, -t, jnp.zeros_like(t)):
        assert bool(jnp.all(jnp.isfinite(_mixed_grad(pred, t, loss=loss))))
    q = jnp.asarray(rng.normal(size=(2, 4, 12, 12, 1)), jnp.float32)
    grad3 = _mixed_grad(q, q[::-1] * 0.5, loss=MixedLoss(window=3, weights=(0.5, 0.5)))
    assert bool(jnp.all(jnp.isfinite(grad3)))


def test_mixed_loss_config_checks_the_patch():
    with pytest.raises(ConfigError, match="at least 44"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [32, 32], "loss": {"name": "l1_ms_ssim"}})
    cfg = RunConfig.from_json({"model": {**TINY_2D, "ndim": 3}, "patch_shape": [8, 48, 48],
                               "loss": {"name": "l1_ms_ssim"}})  # per plane: z may be short
    assert cfg.loss.axes == "planes"
    with pytest.raises(ConfigError, match="at least 44"):
        RunConfig.from_json({"model": {**TINY_2D, "ndim": 3}, "patch_shape": [8, 48, 48],
                             "loss": {"name": "l1_ms_ssim", "axes": "volume"}})
    with pytest.raises(ConfigError, match="window must be odd"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [64, 64], "loss": {"name": "l1_ms_ssim", "window": 4}})
    with pytest.raises(ConfigError, match="loss"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [64, 64], "loss": "l1"})


# --------------------------------------------------------------------------------------------
# EMA and the step with every option on
# --------------------------------------------------------------------------------------------
def test_ema_equals_the_closed_form():
    decay = 0.9
    cfg = RunConfig.from_json({"model": {**TINY_2D, "depth": 1}, "patch_shape": [16, 16], "batch_size": 2,
                               "ema": {"decay": decay}})
    state = init_train_state(cfg)
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])
    seen_p, seen_b = [flat(state["params"])], [flat(state["batch_stats"])]
    np.testing.assert_array_equal(flat(state["ema"]["params"]), seen_p[0])
    tx = make_optimizer(cfg.optimizer, cfg.schedule, cfg.steps)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = jnp.asarray(rng.normal(size=(2, 1, 16, 16)), jnp.float32)
        state, _ = jit_train_step(state, x, jnp.tanh(x), None, network=cfg.model, compute_dtype="float32", tx=tx,
                                  loss="mse", ema_decay=decay)
        seen_p.append(flat(state["params"]))
        seen_b.append(flat(state["batch_stats"]))
    for seen, got in ((seen_p, state["ema"]["params"]), (seen_b, state["ema"]["batch_stats"])):
        closed = decay**3 * seen[0] + (1 - decay) * (decay**2 * seen[1] + decay * seen[2] + seen[3])
        np.testing.assert_allclose(flat(got), closed, rtol=1e-5, atol=1e-7)
        assert not np.allclose(flat(got), seen[3])
    assert eval_variables(state)["params"] is state["ema"]["params"]
    with pytest.raises(ValueError, match="ema_decay"):
        jit_train_step(state, x, x, None, network=cfg.model, compute_dtype="float32", tx=tx, loss="mse")


def _rich_config(**extra) -> dict:
    return {
        "name": "robust",
        "signal_transforms": [{"name": "normalize_percentile", "statistics": "dataset"}],
        "target_transforms": [{"name": "normalize_percentile", "low": 1.0, "high": 99.0}],
        "model": TINY_2D, "patch_shape": [32, 32], "batch_size": 2, "buffer_size": 2, "steps": 2,
        "checkpoint_interval": 2, "validation_interval": 0, "validation_patches": 2, "seed": 1,
        "loss": {"name": "l1_ms_ssim", "window": 5, "weights": [0.3, 0.7]},
        "augmentation": _ALL_ON, "ema": {"decay": 0.5}, **extra,
    }


def test_a_run_with_every_option_on(tmp_path):
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(3):
        s = (rng.gamma(2.0, 100.0, size=(1, 36 + 4 * i, 40)) + 500).astype(np.float32)
        pairs.append((s, np.sqrt(s).astype(np.float32)))
    raw = ArrayDataset(pairs)
    cfg = RunConfig.from_json(_rich_config())
    pooled = np.concatenate([p[0].ravel() for p in pairs]).astype(np.float64)
    expected = np.percentile(pooled, [1.0, 99.8])  # all pixels of all (three) images take part
    values = dataset_percentiles(raw, 1.0, 99.8)
    np.testing.assert_allclose(values, [expected], rtol=1e-12)

    sig, tgt = cfg.signal_transforms, cfg.target_transforms
    train_ds = ArrayDataset(pairs[:2], signal_transforms=sig, target_transforms=tgt)
    val_ds = ArrayDataset(pairs[2:], signal_transforms=sig, target_transforms=tgt)
    resolved, _, _ = resolve_dataset_percentiles(cfg, train_ds, val_ds)
    assert resolved.digest() == cfg.digest() and resolved.signal_transforms[0].values is not None

    result = train(cfg, tmp_path / "run", train_dataset=train_ds, validation_dataset=val_ds, progress=False)
    assert result.steps == 2 and math.isfinite(result.final_loss) and math.isfinite(result.val_loss)
    model = load_package(result.package_dir)
    step = model.config.signal_transforms[0]
    two = np.concatenate([p[0].ravel() for p in pairs[:2]]).astype(np.float64)
    np.testing.assert_allclose(step.values, [np.percentile(two, [1.0, 99.8])], rtol=1e-12)
    record = model.config.training
    assert record["ema"] == {"decay": 0.5, "batch_norm_patches": 64} and record["loss"]["name"] == "l1_ms_ssim"
    assert record["augmentation"]["noise"]["sd"] == [0.05, 0.2]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["signal_transforms"][0]["values"] is None  # the run's config as given (resume compares it)
    # resuming with the same config is accepted (the digest ignores the measured values) and adds nothing
    again = train(cfg, tmp_path / "run", train_dataset=train_ds, validation_dataset=val_ds, resume=True,
                  progress=False)
    assert again.resumed_from == 2 and again.steps == 2


def test_ema_weights_are_exported(tmp_path):
    from labelfree_jax.training.export import write_package

    cfg = RunConfig.from_json({"model": {**TINY_2D, "depth": 1}, "patch_shape": [16, 16], "ema": {"decay": 0.9}})
    state = init_train_state(cfg)
    state["ema"] = jax.tree_util.tree_map(lambda a: a + 1.0, state["ema"])
    package = write_package(cfg, tmp_path, state, {}, 1)
    model = load_package(package)
    got = jax.tree_util.tree_leaves(model.variables["params"])
    want = jax.tree_util.tree_leaves(state["ema"]["params"])
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# configs written before these options keep their meaning
# --------------------------------------------------------------------------------------------
#: digests computed with the code before issue 16 (commit of the session's start)
_OLD_DIGESTS = {
    "zoo/alpha_tubulin/train.json": "82197f081dfba36c",
    "zoo/beta_actin/train.json": "1dd539c6dd93fb23",
    "zoo/desmoplakin/train.json": "5a9b9f77d32b235b",
    "template:2d": "fb9cdcf6941f6dd7",
    "template:2d-planes": "6d2fc81cc6429c59",
    "template:3d": "98d3fb9bb8c640db",
}


def test_old_configs_load_unchanged():
    for source, digest in _OLD_DIGESTS.items():
        if source.startswith("template:"):
            kind = source.split(":")[1]
            raw = template_config(kind)
            # the template now shows the new options as null; without them it is the old template
            old = copy.deepcopy(raw)
            old.pop("ema")
            for name in ("scale_shift", "contrast", "gamma", "blur", "noise"):
                old["augmentation"].pop(name)
            configs = [RunConfig.from_json(raw), RunConfig.from_json(old)]
        else:
            configs = [RunConfig.from_json((REPO / source).read_text())]
        for cfg in configs:
            assert cfg.digest() == digest, source
            assert cfg.ema is None and cfg.augmentation.intensity() is None and isinstance(cfg.loss, str)
            assert "ema" not in cfg.training_record(1)
            assert set(cfg.training_record(1)["augmentation"]) == {"flip", "rotate90"}
    assert set(KINDS) == {"2d", "2d-planes", "3d"}


def test_old_config_first_step_is_unchanged():
    """The loader's first batch and the first losses of a config without the new options, as before them."""
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "seed": 3,
                               "augmentation": {"flip": True, "rotate90": True}, "buffer_size": 2})
    assert cfg.digest() == "5d240da33fe0ca11"  # recorded before issue 16
    rng = np.random.default_rng(0)
    sig = [rng.normal(size=(1, 40, 44)).astype(np.float32) for _ in range(3)]
    ds = ArrayDataset([(s, np.tanh(2 * s)) for s in sig], signal_transforms=[{"name": "normalize"}],
                      target_transforms=[{"name": "normalize"}])
    loader = PatchLoader(ds, **cfg.loader_options().kwargs())
    batch = next(loader)
    loader.close()
    assert hashlib.sha256(batch.signal.tobytes() + batch.target.tobytes()).hexdigest()[:16] == "98991d2a9ee86c22"
    state = init_train_state(cfg)
    assert set(state) == {"step", "params", "batch_stats", "opt_state"}
    net = build_network(cfg.model)
    pred, _ = jax.jit(lambda v, xx: net.apply(v, xx, train=True, mutable=["batch_stats"]))(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, jnp.moveaxis(batch.signal, 1, -1))
    reference = float(np.mean((np.moveaxis(np.asarray(pred), -1, 1) - batch.target) ** 2))
    tx = make_optimizer(cfg.optimizer, cfg.schedule, cfg.steps)
    _, loss = jit_train_step(state, jnp.asarray(batch.signal), jnp.asarray(batch.target), None, network=cfg.model,
                             compute_dtype="float32", tx=tx, loss=cfg.loss)
    assert float(loss) == pytest.approx(reference, rel=1e-5)
    assert float(loss) == pytest.approx(1.0174040794372559, rel=1e-4)  # the value before issue 16


def test_dataset_percentiles_of_a_manifest_split(tmp_path):
    from labelfree_jax.imagefiles import write_ome_tiff
    from labelfree_jax.training.datasets import build_datasets

    rng = np.random.default_rng(6)
    rows, raws = [], []
    for i in range(4):
        s = (rng.gamma(2.0, 50.0, size=(1, 32, 34)) + 100 * i).astype(np.float32)
        write_ome_tiff(tmp_path / f"s{i}.ome.tif", s)
        write_ome_tiff(tmp_path / f"t{i}.ome.tif", np.sqrt(s))
        rows.append(f"s{i}.ome.tif,t{i}.ome.tif")
        raws.append(s)
    (tmp_path / "m.csv").write_text("path_signal,path_target\n" + "\n".join(rows) + "\n")
    cfg = RunConfig.from_json({"data": {"train": {"manifest": str(tmp_path / "m.csv"), "region": {"x": [0, 32]}},
                                        "validation_fraction": 0.25},
                               "signal_transforms": [{"name": "pad_to_multiple", "multiple": 4},
                                                     {"name": "normalize_percentile", "low": 2.0, "high": 98.0,
                                                      "statistics": "dataset"}],
                               "target_transforms": [{"name": "pad_to_multiple", "multiple": 4}],
                               "model": TINY_2D, "patch_shape": [16, 16]})
    train_ds, val_ds = build_datasets(cfg)
    resolved, train2, val2 = resolve_dataset_percentiles(cfg, train_ds, val_ds)
    used = [raws[i][..., :32] for i in train_ds.indices]  # the training rows of the split, region cropped
    lo, hi = np.percentile(np.concatenate([u.ravel() for u in used]).astype(np.float64), [2.0, 98.0])
    step = resolved.signal_transforms[1]
    assert step.values == ((pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12)),)
    for ds in (train2, val2):  # both parts of the split apply the measured values
        pair, index = ds.load(0), ds.indices[0]
        np.testing.assert_allclose(pair.signal[0], (raws[index][0, :, :32] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no values yet"):
        train_ds.load(0)  # the datasets as built, without the measured values, refuse to guess


def test_dataset_percentile_placement_is_checked():
    base = {"model": TINY_2D, "patch_shape": [16, 16]}
    step = {"name": "normalize_percentile", "statistics": "dataset"}
    with pytest.raises(ConfigError, match="only resize / pad / crop steps may come before it"):
        RunConfig.from_json({**base, "signal_transforms": [{"name": "normalize"}, step]})
    with pytest.raises(ConfigError, match="target_transforms: normalize_percentile with statistics='dataset'"):
        RunConfig.from_json({**base, "target_transforms": [step]})
    given = RunConfig.from_json({**base, "target_transforms": [{**step, "values": [[0.0, 2.0]]}]})
    assert given.target_transforms[0].values == ((0.0, 2.0),)
