"""Issue 15: the compile notice and an ETA without the compile; optional TensorBoard event files.

The runs here share one tiny 2D network, batch and patch shape (one compile per process).
"""

from __future__ import annotations

import csv
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training import RunConfig, load_run_config, train
from labelfree_jax.training.config import LOGGING_ONLY
from labelfree_jax.training.progress import COMPILING_MESSAGE, StepClock, eta_seconds, format_eta
from labelfree_jax.training.run_files import RESUMABLE_CHANGES

TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    """Two small 2D pairs, validation on a region of the first, a 10-step config (validation every 5)."""
    root = tmp_path_factory.mktemp("extras")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        s = rng.normal(size=(1, 40, 44)).astype(np.float32)
        write_ome_tiff(root / f"s{i}.ome.tif", s)
        write_ome_tiff(root / f"t{i}.ome.tif", np.tanh(2 * s).astype(np.float32))
        rows.append(f"s{i}.ome.tif,t{i}.ome.tif")
    (root / "train.csv").write_text("path_signal,path_target\n" + "\n".join(rows) + "\n")
    config = {"name": "tiny", "data": {"train": {"manifest": "train.csv"},
                                       "validation": {"manifest": "train.csv", "region": {"x": [0, 32]}}},
              "signal_transforms": [{"name": "normalize"}], "target_transforms": [{"name": "normalize"}],
              "model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "buffer_size": 2, "steps": 10,
              "checkpoint_interval": 5, "validation_interval": 5, "validation_patches": 4, "log_interval": 3,
              "seed": 2}
    path = root / "run.json"
    path.write_text(json.dumps(config))
    return path


# --------------------------------------------------------------------------------------------
# ETA
# --------------------------------------------------------------------------------------------
def test_eta_helpers():
    assert eta_seconds(10, 5.0, 100) == pytest.approx(50.0)
    assert eta_seconds(0, 5.0, 100) is None and eta_seconds(10, 0.0, 100) is None
    assert eta_seconds(10, 5.0, 0) == 0.0
    assert [format_eta(s) for s in (None, 0, 59.4, 61, 3600 + 62)] == ["?", "0:00", "0:59", "1:01", "1:01:02"]


def test_eta_leaves_out_the_compiling_first_step_and_pauses():
    now = [0.0]
    clock = StepClock(lambda: now[0])
    assert clock.eta(0, 100) is None and not clock.compiled
    now[0] = 60.0  # the first step: a one-minute compile
    clock.first_step_done(1)
    assert clock.compiled and clock.eta(1, 100) is None  # nothing measured after the first step yet
    for step in range(2, 12):  # ten steps of 0.1 s, queued; the host waits for them at step 11
        now[0] += 0.1
    clock.synced(11)
    assert clock.steps_per_second() == pytest.approx(10.0)
    assert clock.eta(11, 100) == pytest.approx(8.9)  # 89 steps at 0.1 s, not (60 s + 1 s) / 11 steps each
    now[0] += 30.0  # a validation
    clock.pause(30.0)
    now[0] += 1.0  # ten more steps
    clock.synced(21)
    assert clock.eta(21, 100) == pytest.approx(7.9)
    assert clock.eta(100, 100) == 0.0


def test_training_says_it_compiles_before_the_first_step(config_path, tmp_path, caplog, capsys):
    steps_seen = []
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        train(load_run_config(config_path), tmp_path / "run", progress=True, on_step=steps_seen.append)
    messages = [r.getMessage() for r in caplog.records if r.name == "labelfree_jax.training.loop"]
    assert messages[0] == COMPILING_MESSAGE == "compiling the network (first step only)..."
    assert messages[1].startswith("first step done in ") and "compilation included" in messages[1]
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert f"train tiny: {COMPILING_MESSAGE}" in bar.splitlines()[next(
        i for i, line in enumerate(bar.splitlines()) if "train tiny" in line)]  # the bar's first state
    assert "eta " in bar and "10/10" in bar
    assert steps_seen == list(range(1, 11))


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------
def _read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files (TFRecord framing, tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tensorboard_events_match_the_csv_logs_and_change_nothing_trained(config_path, tmp_path):
    pytest.importorskip("tensorboardX")
    base = load_run_config(config_path)
    on = base.model_copy(update={"tensorboard": True})
    assert on.digest() == base.digest()  # a logging option: same fingerprint, same package record
    train(base, tmp_path / "off", progress=False)
    train(on, tmp_path / "on", progress=False)
    assert not (tmp_path / "off" / "tensorboard").exists()

    scalars = _read_events(tmp_path / "on" / "tensorboard")
    losses = _csv(tmp_path / "on" / "losses.csv")
    assert [s for s, _ in scalars["loss/train"]] == [int(r["step"]) for r in losses] == list(range(1, 11))
    np.testing.assert_allclose([v for _, v in scalars["loss/train"]], [float(r["loss"]) for r in losses], rtol=1e-6)
    val = _csv(tmp_path / "on" / "validation.csv")
    assert [s for s, _ in scalars["loss/validation"]] == [int(r["step"]) for r in val] == [5, 10]
    np.testing.assert_allclose([v for _, v in scalars["loss/validation"]], [float(r["val_loss"]) for r in val],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["validation/pearson_r"]],
                               [float(r["val_pearson_r"]) for r in val], rtol=1e-6)

    # bit-identical training with and without it
    for name in ("losses.csv", "validation.csv"):
        assert (tmp_path / "on" / name).read_bytes() == (tmp_path / "off" / name).read_bytes()
    assert (tmp_path / "on" / "package" / "config.json").read_bytes() == \
        (tmp_path / "off" / "package" / "config.json").read_bytes()
    # (safetensors writes its header's metadata keys in no fixed order: compare the tensors bit for bit)
    weights_on = load_file(tmp_path / "on" / "package" / "model.safetensors")
    weights_off = load_file(tmp_path / "off" / "package" / "model.safetensors")
    assert sorted(weights_on) == sorted(weights_off)
    for key, value in weights_on.items():
        assert value.dtype == weights_off[key].dtype and value.tobytes() == weights_off[key].tobytes(), key


def test_tensorboard_resume_purges_events_after_the_checkpoint(config_path, tmp_path):
    pytest.importorskip("tensorboardX")
    config = load_run_config(config_path).model_copy(update={"tensorboard": True})
    train(config.model_copy(update={"steps": 7}), tmp_path / "run", progress=False)  # checkpoints 5 and 7
    train(config, tmp_path / "run", resume=True, progress=False)
    scalars = _read_events(tmp_path / "run" / "tensorboard")
    # the second file starts at the checkpoint (step 7) with TensorBoard's purge marker; steps 8..10 once
    assert sorted({s for s, _ in scalars["loss/train"]}) == list(range(1, 11))
    assert [s for s, _ in scalars["loss/train"]].count(8) == 1


def test_tensorboard_is_a_logging_option():
    assert "tensorboard" in LOGGING_ONLY and "tensorboard" in RESUMABLE_CHANGES
    assert RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "tensorboard": True}).tensorboard
    with pytest.raises(ConfigError, match="tensorboard"):
        RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "tensorboard": "yes please"})


def test_tensorboard_without_tensorboardx_says_how_to_install(config_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    config = load_run_config(config_path).model_copy(update={"tensorboard": True})
    with pytest.raises(ConfigError, match=r"pip install 'labelfree-jax\[tensorboard\]'"):
        train(config, tmp_path / "run", progress=False)


def test_a_run_shorter_than_its_warmup_is_a_warning(caplog):
    import logging

    from labelfree_jax.training.config import RunConfig
    from labelfree_jax.training.fit import _warn_about_the_schedule

    with caplog.at_level(logging.WARNING, logger="labelfree_jax"):
        _warn_about_the_schedule(RunConfig.model_validate({"steps": 40, "schedule": {"warmup_steps": 100}}))
    assert "never leaves its warm-up" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labelfree_jax"):
        _warn_about_the_schedule(RunConfig.model_validate({"steps": 400, "schedule": {"warmup_steps": 100}}))
    assert caplog.text == ""


def test_the_eta_is_the_time_cap_when_the_cap_ends_the_run_sooner():
    from labelfree_jax.training.progress import eta_text

    assert eta_text(376.0, None) == "6:16"  # no cap: the steps' ETA
    assert eta_text(376.0, 150.0) == "2:30 (time cap)"  # the cap stops the run first
    assert eta_text(100.0, 150.0) == "1:40"  # the steps end first
    assert eta_text(None, 90.0) == "1:30 (time cap)" and eta_text(None, None) == "?"
    assert eta_text(10.0, -3.0) == "0:00 (time cap)"
