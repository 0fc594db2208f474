"""Tests of labelfree_jax.evaluation.report and the ``labelfree report`` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import tifffile
from PIL import Image

import labelfree_jax
import labelfree_jax.hub
from labelfree_jax.cli import main
from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation import metrics as M
from labelfree_jax.evaluation.report import FIGURE_FILES, METRICS_FILE, REPORT_FILE, write_report
from labelfree_jax.models.config import NetworkConfig, PackageConfig


def _volume(seed, shape=(6, 24, 28)):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    v = 0.1 * rng.random(shape)
    for _ in range(3):
        c = [rng.uniform(0, s) for s in shape]
        v += np.exp(-((zz - c[0]) ** 2 / 4 + (yy - c[1]) ** 2 / 10 + (xx - c[2]) ** 2 / 10))
    return v.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    signal = (_volume(0) + 2.0)[None]
    target = np.stack([_volume(1), _volume(2)])
    rng = np.random.default_rng(9)
    prediction = (3.0 * target + 0.2 * rng.standard_normal(target.shape) + 1.0).astype(np.float32)
    return signal, target, prediction


def _links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", md)


def test_write_report_with_target(data, tmp_path):
    signal, target, prediction = data
    path = write_report(tmp_path / "rep", signal=signal, target=target, prediction=prediction,
                        names={"signal": "bf.tif", "target": "dna.tif"},
                        pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108}, noise_variance=[0.001, 0.002])
    assert path == tmp_path / "rep" / REPORT_FILE
    md = path.read_text()
    # the metrics table holds the independently computed Pearson r of each channel
    r = [float(np.corrcoef(prediction[c].ravel(), target[c].ravel())[0, 1]) for c in range(2)]
    row = next(line for line in md.splitlines() if line.startswith("| Pearson r |"))
    assert row == f"| Pearson r | {r[0]:.4f} | {r[1]:.4f} |"
    assert "C_max" in md and "bf.tif" in md and "2 × 6 × 24 × 28" in md and "z 0.29" in md
    links = _links(md)
    assert set(FIGURE_FILES.values()) | {METRICS_FILE} == set(links)
    for link in links:
        f = path.parent / link
        assert f.is_file() and f.stat().st_size > 0
        if f.suffix in (".png", ".gif"):
            with Image.open(f) as im:
                assert im.size[0] > 50
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]
    record = json.loads((path.parent / METRICS_FILE).read_text())
    assert [c["channel"] for c in record["channels"]] == [0, 1]
    for c in range(2):
        expected = M.evaluate(prediction[c], target[c], noise_variance=[0.001, 0.002][c])
        got = record["channels"][c]
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9), key
    assert record["normalize"] == "none"
    assert record["inputs"]["target"]["name"] == "dna.tif"


def test_zscore_normalisation(data, tmp_path):
    signal, target, prediction = data
    path = write_report(tmp_path, signal=signal, target=target, prediction=prediction,
                        normalize="zscore", noise_variance=0.001)
    record = json.loads((tmp_path / METRICS_FILE).read_text())
    for c in range(2):
        t = (target[c] - target[c].mean()) / target[c].std()
        p = (prediction[c] - prediction[c].mean()) / prediction[c].std()
        got = record["channels"][c]
        assert got["mse"] == pytest.approx(M.mse(p, t), rel=1e-5)
        # Pearson r and C_max do not depend on the normalisation
        assert got["pearson_r"] == pytest.approx(M.pearson_r(prediction[c], target[c]), abs=1e-6)
        assert got["c_max"] == pytest.approx(M.noise_ceiling_cmax(target[c], 0.001), abs=1e-6)
    assert "z-scored" in path.read_text()


def test_prediction_only_report_2d(data, tmp_path):
    signal, _, prediction = data
    path = write_report(tmp_path, signal=signal[:, 2], prediction=prediction[:, 2])
    md = path.read_text()
    assert "## Metrics" not in md and "no metrics" in md
    links = _links(md)
    assert FIGURE_FILES["projections"] in links and FIGURE_FILES["comparison"] in links
    assert FIGURE_FILES["toggle"] not in links
    for link in links:
        assert (tmp_path / link).is_file()
    assert json.loads((tmp_path / METRICS_FILE).read_text())["channels"] == []


def test_write_report_rejects_bad_inputs(data, tmp_path):
    signal, target, prediction = data
    with pytest.raises(InputError, match="spatial shape"):
        write_report(tmp_path, signal=signal, target=target, prediction=prediction[..., :20])
    with pytest.raises(InputError, match="channel"):
        write_report(tmp_path, signal=signal, target=target, prediction=prediction[:1])
    with pytest.raises(InputError, match="normalize"):
        write_report(tmp_path, signal=signal, target=target, prediction=prediction, normalize="minmax")
    with pytest.raises(InputError, match="noise_variance"):
        write_report(tmp_path, signal=signal, target=target, prediction=prediction, noise_variance=[1, 2, 3])
    assert not (tmp_path / REPORT_FILE).exists()


def test_cli_help_exits_zero():
    res = subprocess.run([sys.executable, "-m", "labelfree_jax", "report", "--help"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "--signal" in res.stdout and "--prediction" in res.stdout and "--model" in res.stdout


def _write_ome(path, data, pixel_sizes=None):
    meta = {"axes": "CZYX"}
    if pixel_sizes:
        meta.update({f"PhysicalSize{k.upper()}": v for k, v in pixel_sizes.items()})
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=meta)


def test_cli_run_on_ome_tiffs(data, tmp_path, capsys):
    signal, target, prediction = data
    _write_ome(tmp_path / "signal.ome.tif", signal, {"z": 0.29, "y": 0.108, "x": 0.108})
    _write_ome(tmp_path / "target.ome.tif", target)
    _write_ome(tmp_path / "pred.ome.tif", prediction)
    out = tmp_path / "out"
    rc = main(["report", "--signal", str(tmp_path / "signal.ome.tif"), "--target", str(tmp_path / "target.ome.tif"),
               "--prediction", str(tmp_path / "pred.ome.tif"), "--out", str(out),
               "--target-channel", "1", "--prediction-channel", "1", "--noise-variance", "0.001"])
    assert rc == 0
    assert str(out / REPORT_FILE) in capsys.readouterr().out
    record = json.loads((out / METRICS_FILE).read_text())
    assert len(record["channels"]) == 1
    assert record["channels"][0]["pearson_r"] == pytest.approx(M.pearson_r(prediction[1], target[1]), abs=1e-6)
    assert record["normalize"] == "zscore"
    assert record["pixel_sizes"]["z"] == pytest.approx(0.29)
    for link in _links((out / REPORT_FILE).read_text()):
        assert (out / link).is_file()
    # a user error is one line on stderr and exit status 1
    rc = main(["report", "--signal", str(tmp_path / "missing.tif"), "--prediction", str(tmp_path / "pred.ome.tif"),
               "--out", str(out)])
    assert rc == 1
    assert "missing.tif" in capsys.readouterr().err


def test_cli_model_path_predicts_first(data, tmp_path, monkeypatch):
    """--model resolves labelfree_jax.hub.zoo.load lazily and reports on model.predict(signal)."""
    signal, target, prediction = data
    calls = {}

    class FakeModel:
        config = PackageConfig(name="fake", network=NetworkConfig(ndim=3, depth=2, mult_chan=1))

        def predict(self, x, **kwargs):
            calls["shape"] = x.shape
            return prediction[:1] + 0.0 * x

    fake_zoo = types.ModuleType("labelfree_jax.hub.zoo")
    fake_zoo.load = lambda name: calls.setdefault("name", name) and FakeModel()
    monkeypatch.setitem(sys.modules, "labelfree_jax.hub.zoo", fake_zoo)
    monkeypatch.setattr(labelfree_jax.hub, "zoo", fake_zoo, raising=False)  # hub.zoo may not be imported yet
    _write_ome(tmp_path / "signal.ome.tif", signal)
    _write_ome(tmp_path / "target.ome.tif", target[:1])
    out = tmp_path / "out"
    assert main(["report", "--signal", str(tmp_path / "signal.ome.tif"), "--target", str(tmp_path / "target.ome.tif"),
                 "--model", "dna", "--out", str(out)]) == 0
    assert calls == {"name": "dna", "shape": signal.shape}
    record = json.loads((out / METRICS_FILE).read_text())
    assert record["channels"][0]["pearson_r"] == pytest.approx(M.pearson_r(prediction[0], target[0]), abs=1e-6)
    assert record["inputs"]["prediction"]["name"] == "model dna"
    # the prediction it computed is saved beside the report, and linked from it
    assert (out / "signal_prediction.ome.tif").is_file() and record["prediction_file"] == "signal_prediction.ome.tif"
    assert "](signal_prediction.ome.tif)" in (out / REPORT_FILE).read_text()


def test_report_lists_warnings(data, tmp_path):
    signal, target, prediction = data
    path = write_report(tmp_path, signal=signal, target=target, prediction=prediction,
                        warnings=["unknown pixel size: the package records none"])
    assert "## Warnings\n\n- unknown pixel size: the package records none\n" in path.read_text()
    assert json.loads((tmp_path / METRICS_FILE).read_text())["warnings"] == ["unknown pixel size: the package records none"]


def test_cli_region_reports_on_the_held_out_part_only(data, tmp_path, capsys):
    signal, target, prediction = data
    prediction = prediction.copy()
    x_split = target.shape[-1] // 2
    prediction[:, :, :, :x_split] = 0.0  # a useless left half: the region must leave it out
    for name, arr in (("s", signal), ("t", target[:1]), ("p", prediction[:1])):
        _write_ome(tmp_path / f"{name}.ome.tif", arr)
    out = tmp_path / "rep"
    rc = main(["report", "--signal", str(tmp_path / "s.ome.tif"), "--target", str(tmp_path / "t.ome.tif"),
               "--prediction", str(tmp_path / "p.ome.tif"), "--out", str(out), "--region", f"x={x_split}:{target.shape[-1]}"])
    assert rc == 0
    record = json.loads((out / METRICS_FILE).read_text())
    held = np.corrcoef(prediction[0][..., x_split:].ravel(), target[0][..., x_split:].ravel())[0, 1]
    assert record["channels"][0]["pearson_r"] == pytest.approx(held, abs=1e-6)
    assert "region x=" in (out / REPORT_FILE).read_text()
    capsys.readouterr()
    assert main(["report", "--signal", str(tmp_path / "s.ome.tif"), "--prediction", str(tmp_path / "p.ome.tif"),
                 "--out", str(out), "--region", "w=1:2"]) == 1
    assert "expected AXIS=START:STOP" in capsys.readouterr().err
