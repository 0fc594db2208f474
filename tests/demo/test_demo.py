"""The offline quick start, end to end in its reduced setting (about a minute on 2 CPU cores)."""

from __future__ import annotations

import contextlib
import io as _stdio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.cli import main
from labelfree_jax.core.errors import InputError
from labelfree_jax.demo import quickstart as D
from labelfree_jax.imagefiles import read_image, write_ome_tiff

pytestmark = pytest.mark.timeout(600)

_PATH_LINE = re.compile(r"^\s+(model package|prediction|held-out signal|held-out target|report|training run|summary):"
                        r"\s+(\S.*)$")


def test_reduced_demo_end_to_end(tmp_path):
    """``labelfree demo --reduced``: runs, learns (held-out r > 0.5), prints paths that exist, reloads.

    One test (not a module fixture shared by several) so that pytest-xdist never runs the
    demo twice.
    """
    out = tmp_path / "out"
    buf = _stdio.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--out", str(out), "--reduced", "--no-progress"])
    run = (out, buf.getvalue(), rc)
    _check_runs_and_learns(run)
    _check_every_printed_path_exists(run)
    _check_outputs_are_ome_tiffs_on_the_synthetic_grid(run)
    _check_package_reloads_and_reproduces_the_prediction(run)


def _printed_paths(stdout: str) -> dict[str, Path]:
    return {m.group(1): Path(m.group(2).strip()) for m in map(_PATH_LINE.match, stdout.splitlines()) if m}


def _check_runs_and_learns(run):
    out, stdout, rc = run
    assert rc == 0
    # the banner of stages, then the summary
    for i in range(1, 6):
        assert f"[{i}/5]" in stdout
    assert "held-out Pearson r" in stdout
    summary = json.loads((out / D.SUMMARY_FILE).read_text())
    assert summary["synthetic"] is True
    assert summary["train_steps"] == D.REDUCED_SETTINGS.steps
    assert summary["stopped_early"] is False
    assert summary["pearson_r"] > 0.5
    printed_r = float(re.search(r"held-out Pearson r: ([0-9.]+)", stdout).group(1))
    assert printed_r == pytest.approx(summary["pearson_r"], abs=5e-4)
    # the reported r is that of the written files (an independent recomputation)
    pred = read_image(out / "heldout_prediction.ome.tif").data
    target = read_image(out / "heldout_target.ome.tif").data
    r = np.corrcoef(pred.ravel().astype(np.float64), target.ravel().astype(np.float64))[0, 1]
    assert r == pytest.approx(summary["pearson_r"], abs=1e-4)
    assert summary["metrics"]["pearson_r"] == pytest.approx(r, abs=1e-4)
    assert 0 < summary["metrics"]["c_max"] <= 1


def _check_every_printed_path_exists(run):
    out, stdout, _ = run
    paths = _printed_paths(stdout)
    assert set(paths) == {"model package", "prediction", "held-out signal", "held-out target", "report",
                          "training run", "summary"}
    for role, p in paths.items():
        assert p.exists(), f"{role}: {p} does not exist"
    assert paths["report"].name == "report.md"
    report_dir = paths["report"].parent
    for name in ("max_projections.png", "observed_vs_predicted.png", "difference_maps.png",
                 "observed_predicted_toggle.gif", "metrics.json"):
        assert (report_dir / name).is_file()
    # the report's own links point at files that exist
    for link in re.findall(r"\]\(([^)]+)\)", paths["report"].read_text()):
        assert (report_dir / link).is_file(), link


def _check_outputs_are_ome_tiffs_on_the_synthetic_grid(run):
    out, _, _ = run
    shape = (1,) + D.REDUCED_SETTINGS.heldout_shape
    for name in ("heldout_signal", "heldout_target", "heldout_prediction"):
        img = read_image(out / f"{name}.ome.tif")
        assert img.axes == "CZYX"
        assert img.data.shape == shape
        assert img.data.dtype == np.float32
        assert img.pixel_sizes == pytest.approx({"z": 0.58, "y": 0.58, "x": 0.58})


def _check_package_reloads_and_reproduces_the_prediction(run):
    from labelfree_jax.hub import zoo

    out, _, _ = run
    package = out / "run" / "package"
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (package / name).is_file()
    model = zoo.load(package)
    net = model.config.network
    assert (net.ndim, net.depth, net.first_channels) == (3, 3, 8)
    assert model.config.pixel_size_um == pytest.approx({"z": 0.58, "y": 0.58, "x": 0.58})
    signal = read_image(out / "heldout_signal.ome.tif").data
    saved = read_image(out / "heldout_prediction.ome.tif").data
    again = model.predict(signal, tile_shape=D.REDUCED_SETTINGS.tile_shape, overlap=D.REDUCED_SETTINGS.overlap,
                          progress=False)
    np.testing.assert_allclose(again, saved, atol=1e-4, rtol=1e-4)


def test_demo_help_lists_the_options():
    buf = _stdio.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = buf.getvalue()
    for option in ("--out", "--signal", "--target", "--max-seconds", "--steps", "--reduced"):
        assert option in text


def test_bad_arguments_fail_fast(tmp_path, capsys):
    with pytest.raises(InputError, match="both"):
        D.run_demo(tmp_path / "a", signal=tmp_path / "s.tif")
    assert main(["demo", "--out", str(tmp_path / "b"), "--target", "t.tif"]) == 1
    assert "both --signal and --target" in capsys.readouterr().err
    # a run folder the demo did not make is never deleted
    foreign = tmp_path / "c" / "run"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not made by 'labelfree demo'"):
        D.run_demo(tmp_path / "c", reduced=True, progress=False)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="steps"):
        D.run_demo(tmp_path / "d", steps=0)
    # unreadable or unusable user files fail before any folder is made
    with pytest.raises(InputError, match="no such file"):
        D.run_demo(tmp_path / "e", signal=tmp_path / "missing.tif", target=tmp_path / "missing2.tif")
    thin = np.random.default_rng(0).random((1, 4, 64, 64), dtype=np.float32)  # 4 planes < 2**depth
    s_path = write_ome_tiff(tmp_path / "thin_s.ome.tif", thin)
    t_path = write_ome_tiff(tmp_path / "thin_t.ome.tif", thin)
    with pytest.raises(InputError, match="only 4 pixels along z"):
        D.run_demo(tmp_path / "f", signal=s_path, target=t_path, reduced=True, progress=False)
    other = write_ome_tiff(tmp_path / "other.ome.tif", thin[:, :, :32])
    with pytest.raises(InputError, match="same spatial shape"):
        D.run_demo(tmp_path / "g", signal=s_path, target=other, reduced=True, progress=False)
    assert not any((tmp_path / name).exists() for name in "efg")


def test_spatial_split():
    train, held = D.spatial_split((32, 128, 96))  # Y is the longest in-plane axis
    assert held == {"y": (96, 128)}
    assert train == {"y": (0, 88)}
    train, held = D.spatial_split((100, 200))
    assert held == {"x": (150, 200)}
    assert train == {"x": (0, 138)}  # a gap of round(200 / 16) = 12 pixels
    with pytest.raises(InputError, match="too small"):
        D.spatial_split((4, 6))


def test_user_files_2d(tmp_path):
    """--signal/--target: a 2D pair is split in space, trained (a few steps) and reported."""
    from labelfree_jax.demo import synthetic as S

    signal, target, _ = S.make_pair((1, 96, 160), seed=4)
    ps = {"y": 0.29, "x": 0.29}
    s_path = write_ome_tiff(tmp_path / "bf.ome.tif", signal[:, 0], axes="CYX", pixel_sizes=ps)
    t_path = write_ome_tiff(tmp_path / "dna.ome.tif", target[:, 0], axes="CYX", pixel_sizes=ps)
    result = D.run_demo(tmp_path / "out", signal=s_path, target=t_path, reduced=True, steps=3, progress=False)
    assert result.synthetic is False
    assert result.train_steps == 3
    assert result.heldout_region == {"x": [120, 160]}
    pred = read_image(result.prediction_path)
    assert pred.axes == "CYX" and pred.data.shape == (1, 96, 40)
    assert pred.pixel_sizes == pytest.approx(ps)
    held_target = read_image(result.target_path).data
    np.testing.assert_array_equal(held_target, target[:, 0, :, 120:])
    assert result.report_path.is_file()
    assert np.isfinite(result.pearson_r)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["model"]["ndim"] == 2
    assert config["patch_shape"] == [64, 64]
    assert json.loads(result.summary_path.read_text())["heldout_region"] == {"x": [120, 160]}
