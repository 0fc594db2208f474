"""Training: config, initial state, the jitted step, checkpoints and resume, data parallelism, NaN, CLI.

The expensive parts (XLA compiles of the train step) are shared: every run here uses the same
tiny 2D network, optimizer, batch and patch shape, so the step compiles once per process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from labelfree_jax.cli import main as cli_main
from labelfree_jax.core.errors import ConfigError
from labelfree_jax.imagefiles import read_image, write_ome_tiff
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import build_network
from labelfree_jax.training import (
    ArrayDataset,
    RunConfig,
    ScheduleConfig,
    TrainingDivergedError,
    init_train_state,
    load_run_config,
    make_mesh,
    make_optimizer,
    make_schedule,
    mse_loss,
    train,
)
from labelfree_jax.training.step import jit_train_step

REPO = Path(__file__).resolve().parents[2]
TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}
ZOO_STRUCTURES = (
    "dna", "lamin_b1", "membrane", "fibrillarin", "tom20", "sec61_beta", "st6gal1", "alpha_tubulin",
    "beta_actin", "desmoplakin", "myosin_iib", "zo1", "dic_lamin_b1", "dic_membrane",
)


def _read_losses(path: Path) -> list[tuple[int, float]]:
    with open(path, newline="") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh) if r["loss"]]


def _child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# shared data and reference run
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """Three small 2D OME-TIFF pairs, a run config file, and an uninterrupted 12-step run of it."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        s = rng.normal(size=(1, 40 + 4 * i, 44)).astype(np.float32)
        t = (np.tanh(2 * s) + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
        write_ome_tiff(root / f"s{i}.ome.tif", s)
        write_ome_tiff(root / f"t{i}.ome.tif", t)
        rows.append(f"s{i}.ome.tif,t{i}.ome.tif")
    (root / "train.csv").write_text("path_signal,path_target\n" + "\n".join(rows) + "\n")
    (root / "val.csv").write_text("path_signal,path_target\n" + rows[0] + "\n")
    config = {
        "name": "tiny",
        "data": {"train": {"manifest": "train.csv"}, "validation": {"manifest": "val.csv", "region": {"x": [0, 32]}}},
        "signal_transforms": [{"name": "normalize"}],
        "target_transforms": [{"name": "normalize"}],
        "model": TINY_2D,
        "patch_shape": [16, 16],
        "batch_size": 4,
        "buffer_size": 2,
        "buffer_switch_interval": 10,
        "augmentation": {"flip": True, "rotate90": True},
        "steps": 12,
        "checkpoint_interval": 4,
        "validation_interval": 6,
        "validation_patches": 6,
        "log_interval": 1,
        "seed": 3,
    }
    cfg_path = root / "run.json"
    cfg_path.write_text(json.dumps(config))
    run_a = root / "uninterrupted"
    with pytest.MonkeyPatch.context() as mp:  # the reference trajectory with XLA's convolutions (xla_convolutions)
        mp.setenv("LABELFREE_ONEDNN", "0")
        jax.clear_caches()
        result = train(load_run_config(cfg_path), run_a, progress=False)
    jax.clear_caches()
    return {"root": root, "config_path": cfg_path, "run": run_a, "result": result}


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def test_run_config_strict_and_paths(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"data": {"train": {"manifest": "sub/m.csv"}}, "model": TINY_2D,
                                                  "patch_shape": [16, 16]}))
    cfg = load_run_config(tmp_path / "c.json")
    assert cfg.data.train.manifest == str((tmp_path / "sub" / "m.csv").resolve())
    assert cfg.optimizer.learning_rate == 1e-3 and cfg.optimizer.betas == (0.5, 0.999)
    (tmp_path / "bad.json").write_text(json.dumps({"model": TINY_2D, "patch_shape": [16, 16], "learning_rate": 1}))
    with pytest.raises(ConfigError, match=r"bad.json.*learning_rate"):
        load_run_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*depth = 4"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 18]})
    with pytest.raises(ConfigError, match="2 axes but the network is 3D"):
        RunConfig.from_json({"patch_shape": [16, 16]})
    with pytest.raises(ConfigError, match="pixel_size_um: .*pixel size keys must be z, y, x"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "pixel_size_um": {"t": 1.0}})
    with pytest.raises(ConfigError, match="validation"):
        RunConfig.from_json({"data": {"train": {"manifest": "a"}, "validation": {"manifest": "b"},
                                      "validation_fraction": 0.2}})


@pytest.mark.parametrize("structure", ZOO_STRUCTURES)
def test_zoo_recipes_are_the_paper_recipe(structure):
    cfg = load_run_config(REPO / "zoo" / structure / "train.json")
    assert cfg.name == structure
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate, cfg.optimizer.betas) == ("adam", 1e-3, (0.5, 0.999))
    assert cfg.loss == "mse" and cfg.schedule.name == "constant"
    assert (cfg.batch_size, cfg.patch_shape, cfg.steps, cfg.buffer_size) == (24, (32, 64, 64), 50_000, 30)
    assert cfg.model == NetworkConfig()  # the paper's 3D net, depth 4, 32 channels
    zoom = 0.5931 if structure.startswith("dic_") else 0.37241
    for pipeline in (cfg.signal_transforms, cfg.target_transforms):
        assert [t.name for t in pipeline] == ["normalize", "resize"]
        assert pipeline[1].zoom == (1.0, zoom, zoom)
    assert [(t.name, t.multiple) for t in cfg.prediction_signal_transforms] == [("pad_to_multiple", 16)]
    assert cfg.data.train.manifest.endswith(f"data/allen/manifests/{structure}/train.csv")
    assert cfg.data.validation.manifest.endswith(f"data/allen/manifests/{structure}/test.csv")


def test_schedules():
    lr = 1e-3
    cos = make_schedule(ScheduleConfig(name="cosine", final_factor=0.1), lr, 100)
    assert float(cos(0)) == pytest.approx(lr) and float(cos(100)) == pytest.approx(1e-4)
    assert float(cos(50)) == pytest.approx(lr * (0.1 + 0.9 * 0.5), rel=1e-5)
    warm = make_schedule(ScheduleConfig(name="constant", warmup_steps=10), lr, 100)
    assert float(warm(5)) == pytest.approx(lr / 2) and float(warm(50)) == pytest.approx(lr)
    step = make_schedule(ScheduleConfig(name="step", boundaries=(30, 60), decay_rate=0.5), lr, 100)
    assert [float(step(s)) for s in (29, 31, 61)] == pytest.approx([lr, lr / 2, lr / 4])
    # equal configs give the same optax object (so the jitted step is reused); steps only matter
    # for schedules that decay over the run
    base = RunConfig(model=NetworkConfig(**TINY_2D), patch_shape=(16, 16))
    assert make_optimizer(base.optimizer, base.schedule, 10) is make_optimizer(base.optimizer, base.schedule, 99)
    cosine = ScheduleConfig(name="cosine")
    assert make_optimizer(base.optimizer, cosine, 10) is not make_optimizer(base.optimizer, cosine, 99)


# --------------------------------------------------------------------------------------------
# initial state and the step
# --------------------------------------------------------------------------------------------
def test_one_jitted_train_step_3d():
    cfg = RunConfig(model=NetworkConfig(ndim=3, depth=2, mult_chan=4), patch_shape=(16, 16, 16), batch_size=2)
    mesh = make_mesh()
    state = init_train_state(cfg, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    # copies: a zero-copy numpy view of a CPU buffer would keep it alive and block the donation
    before = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), state)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
    y = (x > 0).astype(np.float32)
    # independent reference: the Flax network in train mode, MSE in numpy
    net = build_network(cfg.model)
    pred, _ = jax.jit(lambda v, xx: net.apply(v, xx, train=True, mutable=["batch_stats"]))(
        {"params": before["params"], "batch_stats": before["batch_stats"]}, jnp.moveaxis(x, 1, -1))
    expected = float(np.mean((np.moveaxis(np.asarray(pred), -1, 1) - y) ** 2))
    tx = make_optimizer(cfg.optimizer, cfg.schedule, cfg.steps)
    old_leaf = state["params"]["conv_out"]["kernel"]
    new, loss = jit_train_step(state, jnp.asarray(x), jnp.asarray(y), None, network=cfg.model,
                                compute_dtype="float32", tx=tx, loss="mse")
    loss = float(loss)
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-5)
    assert old_leaf.is_deleted()  # the state was donated
    after = jax.device_get(new)
    assert int(after["step"]) == 1
    flat_b = traverse_util.flatten_dict(before["params"], sep="/")
    flat_a = traverse_util.flatten_dict(after["params"], sep="/")
    changed = [k for k in flat_b if not np.array_equal(flat_b[k], flat_a[k])]
    assert len(changed) == len(flat_b)  # Adam moves every parameter on the first step
    # BatchNorm running statistics moved towards the batch statistics (momentum 0.9)
    mean_b = before["batch_stats"]["net_recurse"]["sub_2conv_more"]["bn1"]["mean"]
    mean_a = after["batch_stats"]["net_recurse"]["sub_2conv_more"]["bn1"]["mean"]
    assert np.all(mean_b == 0) and np.abs(mean_a).max() > 0
    # Adam's first step is lr * g / (|g| + eps) (bias-corrected moments): |update| <= lr, ~lr for most
    delta = np.abs(flat_a["conv_out/kernel"] - flat_b["conv_out/kernel"])
    assert delta.max() <= 1e-3 * (1 + 1e-5) and np.median(delta) == pytest.approx(1e-3, rel=1e-3)


def test_bf16_step_keeps_float32_master_weights():
    cfg = RunConfig(model=NetworkConfig(ndim=2, depth=1, mult_chan=4), patch_shape=(16, 16), batch_size=4,
                    compute_dtype="bfloat16")
    state = init_train_state(cfg)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 1, 16, 16)), jnp.float32)
    tx = make_optimizer(cfg.optimizer, cfg.schedule, cfg.steps)
    w = jnp.asarray(rng.uniform(size=(4, 1, 16, 16)) > 0.5, jnp.float32)  # weighted MSE at the same time
    new, loss = jit_train_step(state, x, jnp.tanh(x), w, network=cfg.model, compute_dtype="bfloat16", tx=tx,
                                loss="weighted_mse")
    assert math.isfinite(float(loss)) and int(new["step"]) == 1
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(new["params"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(new["opt_state"]) if leaf.ndim)


def test_weighted_mse():
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=(2, 5, 5, 2)), rng.normal(size=(2, 5, 5, 2))
    w = rng.uniform(size=(2, 5, 5, 1))
    got = float(mse_loss(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32)))
    ref = (np.broadcast_to(w, p.shape) * (p - t) ** 2).sum() / np.broadcast_to(w, p.shape).sum()
    assert got == pytest.approx(ref, rel=1e-5)
    assert float(mse_loss(jnp.asarray(p), jnp.asarray(t), None)) == pytest.approx(((p - t) ** 2).mean(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# a whole run, checkpoints, resume
# --------------------------------------------------------------------------------------------
def test_run_directory_contents(file_run):
    run, result = file_run["run"], file_run["result"]
    assert result.steps == 12 and not result.stopped_early and result.resumed_from is None
    losses = _read_losses(run / "losses.csv")
    assert [s for s, _ in losses] == list(range(1, 13)) and all(math.isfinite(v) for _, v in losses)
    with open(run / "validation.csv", newline="") as fh:
        val = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in val] == [6, 12]
    assert result.val_pearson_r == pytest.approx(float(val[-1]["val_pearson_r"]))
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "8"]
    assert {p.name for p in (run / "checkpoints" / "12").iterdir()} >= {"state", "meta"}
    meta = json.loads((run / "checkpoints" / "12" / "meta" / "metadata").read_text())
    assert meta["step"] == 12 and meta["loader"] == {"seed": 3, "next_patch": 48}
    model = load_package(result.package_dir)
    cfg = load_run_config(file_run["config_path"])
    assert model.config.network == cfg.model and model.config.signal_transforms == cfg.signal_transforms
    assert model.config.metrics["val_pearson_r"] == pytest.approx(result.val_pearson_r)
    assert model.config.training["steps"] == 12
    # the package's model card states the training recipe
    card = (result.package_dir / "README.md").read_text()
    for fact in ("## Training", "* steps: `12`", "* batch_size: `4`", "* patch_shape: `[16, 16]`", '* loss: `"mse"`',
                 "* seed: `3`", '* train_manifest: `"train.csv"`', "| val_pearson_r |"):
        assert fact in card, fact
    summary = json.loads((run / "result.json").read_text())
    assert summary["steps"] == 12 and summary["loader_patches_per_s"] > 0 and summary["steps_per_s"] > 0
    # a second run into the same directory must say to resume
    with pytest.raises(ConfigError, match="resume"):
        train(cfg, run, progress=False)
    # resuming with a different trajectory-defining config is refused
    other = RunConfig.model_validate(cfg.model_dump() | {"seed": 4})
    with pytest.raises(ConfigError, match="seed"):
        train(other, run, resume=True, progress=False)


@pytest.fixture()
def xla_convolutions(monkeypatch):
    """Bit-reproducible training needs XLA's own convolutions: the optional oneDNN kernels (on by default where
    installed) reduce in an order that can change between runs (OpenMP), which moves losses by ~1e-4 after a few
    steps. The environment reaches child processes too; compiled functions are traced again on both sides."""
    monkeypatch.setenv("LABELFREE_ONEDNN", "0")
    jax.clear_caches()
    yield
    jax.clear_caches()


def test_kill_and_resume_gives_the_same_losses(file_run, tmp_path, xla_convolutions):
    run_b = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from labelfree_jax.training import load_run_config, train

        run = Path({str(run_b)!r})

        def on_step(step):
            if step == 9:  # after the checkpoint of step 8 is committed, die without any cleanup
                deadline = time.time() + 120
                while not (run / "checkpoints" / "8").is_dir() and time.time() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)

        train(load_run_config({str(file_run['config_path'])!r}), run, progress=False, on_step=on_step)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [s for s, _ in _read_losses(run_b / "losses.csv")][-1] == 9  # it got past the checkpoint
    assert not (run_b / "package").exists()
    result = train(load_run_config(file_run["config_path"]), run_b, resume=True, progress=False)
    assert result.resumed_from == 8 and result.steps == 12
    a = _read_losses(file_run["run"] / "losses.csv")
    b = _read_losses(run_b / "losses.csv")
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=1e-7)
    wa = load_package(file_run["result"].package_dir).variables
    wb = load_package(result.package_dir).variables
    for x, y in zip(jax.tree_util.tree_leaves(wa), jax.tree_util.tree_leaves(wb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_four_devices_follow_the_one_device_trajectory(file_run, tmp_path, xla_convolutions):
    run_c = tmp_path / "four"
    script = textwrap.dedent(f"""
        import json, jax
        from labelfree_jax.training import load_run_config, train
        assert jax.device_count() == 4, jax.devices()
        r = train(load_run_config({str(file_run['config_path'])!r}), {str(run_c)!r}, progress=False)
        print("DEVICES", jax.device_count(), r.steps)
    """)
    env = _child_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEVICES 4 12" in proc.stdout
    a = np.array([v for _, v in _read_losses(file_run["run"] / "losses.csv")])
    c = np.array([v for _, v in _read_losses(run_c / "losses.csv")])
    assert len(c) == len(a) == 12
    # Step 1 is the forward pass of the initial weights: BatchNorm uses the statistics of the
    # global batch of 4 (one patch per device), so the loss equals the 1-device loss.
    assert c[0] == pytest.approx(a[0], rel=1e-6)
    # Later steps differ only by float summation order. This tiny ReLU/Adam setup amplifies
    # rounding noise (~1e-7 relative) to ~1e-3 within 12 steps, so the tolerance is measured:
    # the same 1-device run on data perturbed by 1e-7 gives the float-noise envelope.
    root = file_run["root"]
    rng = np.random.default_rng(11)
    rows = []
    for i in range(3):
        sig = read_image(root / f"s{i}.ome.tif").data
        write_ome_tiff(tmp_path / f"p{i}.ome.tif", (sig + 1e-7 * rng.normal(size=sig.shape)).astype(np.float32))
        rows.append(f"p{i}.ome.tif,{root / f't{i}.ome.tif'}")
    (tmp_path / "pert.csv").write_text("path_signal,path_target\n" + "\n".join(rows) + "\n")
    cfg = json.loads(file_run["config_path"].read_text())
    cfg["data"] = {"train": {"manifest": str(tmp_path / "pert.csv")}}
    (tmp_path / "pert.json").write_text(json.dumps(cfg))
    train(load_run_config(tmp_path / "pert.json"), tmp_path / "pert", progress=False)
    p = np.array([v for _, v in _read_losses(tmp_path / "pert" / "losses.csv")])
    envelope = np.maximum.accumulate(np.abs(p - a))
    assert envelope[-1] > 0  # the perturbation did reach the trajectory
    np.testing.assert_array_less(np.abs(c - a), 10 * envelope + 2e-6 * np.abs(a))


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
    # 3 patches cannot be split over a 2-device mesh: checked in a subprocess with 2 CPU devices
    script = textwrap.dedent("""
        import numpy as np
        from labelfree_jax.core.errors import ConfigError
        from labelfree_jax.training import ArrayDataset, RunConfig, train
        cfg = RunConfig.from_json({"model": %r, "patch_shape": [16, 16], "batch_size": 3, "steps": 1})
        ds = ArrayDataset([(np.ones((1, 20, 20)), np.ones((1, 20, 20)))])
        try:
            train(cfg, %r, train_dataset=ds, progress=False)
        except ConfigError as err:
            print("REFUSED", err)
    """ % (TINY_2D, str(tmp_path / "r")))
    env = _child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED batch_size 3 must be a multiple of the number of devices (2)" in proc.stdout, proc.stderr[-2000:]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    good = rng.normal(size=(1, 32, 32)).astype(np.float32)
    huge = np.full((1, 32, 32), 3e38, np.float32) * rng.choice([-1, 1], size=(1, 32, 32)).astype(np.float32)
    ds = ArrayDataset([(good, np.tanh(good)), (huge, huge)])
    # the buffer holds one image and switches to the huge one after 3 steps of 4 patches
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "buffer_size": 1,
                               "buffer_switch_interval": 12, "shuffle_images": False, "steps": 10,
                               "checkpoint_interval": 2, "validation_interval": 0})
    run = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match=r"at step 4.*last good checkpoint is step 2"):
        train(cfg, run, train_dataset=ds, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert [s for s, _ in _read_losses(run / "losses.csv")] == [1, 2, 3]
    assert not (run / "package").exists()
    # the kept checkpoint is a usable starting point: resuming on good data continues from step 2
    ok = ArrayDataset([(good, np.tanh(good))])
    result = train(cfg, run, resume=True, train_dataset=ok, progress=False, max_seconds=None)
    assert result.resumed_from == 2 and result.steps == 10 and math.isfinite(result.final_loss)


def test_weighted_loss_needs_weight_maps(tmp_path):
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "loss": "weighted_mse"})
    x = np.ones((1, 20, 20), np.float32)
    with pytest.raises(ConfigError, match="weight map"):
        train(cfg, tmp_path / "w", train_dataset=ArrayDataset([(x, x)]), progress=False)


def test_max_seconds_stops_early_and_still_writes_the_package(tmp_path):
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "steps": 1000,
                               "validation_interval": 0})
    x = np.random.default_rng(6).normal(size=(1, 24, 24)).astype(np.float32)
    result = train(cfg, tmp_path / "quick", train_dataset=ArrayDataset([(x, x)]), progress=False, max_seconds=0.0)
    assert result.stopped_early and result.steps == 0
    assert (result.package_dir / "model.safetensors").is_file()


def test_max_cpu_seconds_stops_after_that_much_cpu_time(tmp_path):
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "steps": 100000,
                               "validation_interval": 0})
    x = np.random.default_rng(7).normal(size=(1, 24, 24)).astype(np.float32)
    cpu0 = time.process_time()
    result = train(cfg, tmp_path / "cpu", train_dataset=ArrayDataset([(x, x)]), progress=False, max_cpu_seconds=3.0)
    spent = time.process_time() - cpu0
    assert result.stopped_early and 0 < result.steps < 100000
    assert spent >= 3.0  # the cap counts CPU time, setup and compilation included
    assert (result.package_dir / "model.safetensors").is_file()


def test_cli_train(file_run, tmp_path, capsys):
    run = tmp_path / "cli"
    argv = ["train", str(file_run["config_path"]), "--run-dir", str(run), "--steps", "2", "--no-progress"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "trained tiny: 2 steps" in out and "model package" in out
    assert (run / "package" / "config.json").is_file()
    assert cli_main(argv) == 1
    assert "--resume" in capsys.readouterr().err
    assert cli_main(argv[:-2] + ["4", "--resume", "--no-progress"]) == 0
    assert [s for s, _ in _read_losses(run / "losses.csv")] == [1, 2, 3, 4]


def test_scripts_train_help():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], env=_child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--distributed" in proc.stdout and "--resume" in proc.stdout


# --------------------------------------------------------------------------------------------
# real data: a short training on isl_condition_b
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
def test_short_training_on_real_data(shared_data, tmp_path):
    """2D net, 13 phase planes -> DAPI, trained on rows 0-767, tested on rows 768-1023."""
    from labelfree_jax.evaluation.metrics import pearson_r
    from labelfree_jax.imagefiles import read_image

    folder = shared_data / "isl_condition_b"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    phase, targets = folder / "phase_zyx.tif", folder / "targets_dapi_map2_nfh_cyx.tif"
    (tmp_path / "isl.csv").write_text(f"path_signal,path_target\n{phase},{targets}\n")

    def dataset(rows):
        return {"manifest": str(tmp_path / "isl.csv"), "signal_axes": "CYX", "target_axes": "CYX",
                "target_channels": [0], "region": {"y": rows}}

    cfg = RunConfig.from_json({
        "name": "isl-dapi",
        "data": {"train": dataset([0, 768]), "validation": dataset([768, 1024])},
        "signal_transforms": [{"name": "normalize"}],
        "target_transforms": [{"name": "normalize"}],
        "model": {"ndim": 2, "depth": 3, "in_channels": 13, "out_channels": 1, "base_channels": 16},
        "patch_shape": [64, 64], "batch_size": 8, "buffer_size": 1, "steps": 400,
        "augmentation": {"flip": True, "rotate90": True},
        "checkpoint_interval": 200, "validation_interval": 0, "validation_patches": 32, "log_interval": 25,
    })
    result = train(cfg, tmp_path / "run", progress=False)
    losses = [v for _, v in _read_losses(tmp_path / "run" / "losses.csv")]
    assert np.mean(losses[-50:]) < 0.8 * np.mean(losses[:50])
    model = load_package(result.package_dir)
    signal_test = read_image(phase, axes="CYX").data[:, 768:].astype(np.float32)
    dapi_test = read_image(targets, axes="CYX").data[0, 768:].astype(np.float32)
    pred = model.predict(signal_test, progress=False)
    r = pearson_r(pred[0], dapi_test)
    print(f"isl_condition_b DAPI: test-region Pearson r {r:.3f}, validation-patch r {result.val_pearson_r:.3f}, "
          f"{result.steps} steps in {result.seconds:.0f} s ({result.steps_per_s:.1f} steps/s, loader "
          f"{result.loader_patches_per_s:.0f} patches/s)")
    assert r > 0.5
