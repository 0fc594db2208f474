"""``labelfree predict --model A --model B --uncertainty``: the ensemble mean and its SD map, written beside
each other with the input's axes and pixel sizes; one model, or members that differ, refused in one line."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.cli import main
from labelfree_jax.imagefiles import read_image, read_provenance, write_ome_tiff
from labelfree_jax.inference.ensemble import write_ensemble
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import save_package
from labelfree_jax.transforms import Normalize
from tests.inference.test_predict import he_variables

NET = NetworkConfig(ndim=2, depth=1, mult_chan=2)
PIXELS = {"y": 0.4, "x": 0.4}


def make_package(folder: Path, seed: int, **changes) -> Path:
    config = PackageConfig(**{"name": f"tiny-dna-{seed}", "network": NET, "signal_transforms": (Normalize(),),
                              "target_transforms": (Normalize(),), "target_channels": ("DNA",),
                              "pixel_size_um": PIXELS, **changes})
    return save_package(folder, config, he_variables(NET, seed=seed))


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("pkgs")
    return [make_package(root / f"seed{k}", k) for k in range(3)]


@pytest.fixture(scope="module")
def signal(tmp_path_factory) -> tuple[Path, np.ndarray]:
    data = (np.random.default_rng(3).random((40, 33)) * 3000 + 200).astype(np.uint16)
    path = write_ome_tiff(tmp_path_factory.mktemp("in") / "cells.ome.tif", data, axes="YX", pixel_sizes=PIXELS)
    return path, data


def run(args: list[str], capsys, caplog) -> tuple[int, str, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        rc = main(["predict", *args, "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def members_mean_sd(packages: list[Path], data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: numpy over each member's own Model.predict (ddof=1)."""
    each = np.stack([load_package(p).predict(data, pixel_sizes=PIXELS, progress=False) for p in packages])
    return each.mean(0), each.std(0, ddof=1)


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_models_write_mean_and_sd_beside_each_other(tmp_path, packages, signal, capsys, caplog):
    src, data = signal
    out = tmp_path / "out"
    rc, stdout, _ = run(["--model", str(packages[0]), "--model", str(packages[1]), str(src), "--out", str(out),
                         "--uncertainty"], capsys, caplog)
    assert rc == 0, stdout
    assert "ensemble of 2 models: predictions are their mean; SD across the members (ddof=1)" in stdout
    pred = read_image(out / "cells_prediction.ome.tif")
    sd = read_image(out / "cells_prediction_sd.ome.tif")
    assert pred.axes == sd.axes == "CYX" and pred.data.shape == sd.data.shape == (1, 40, 33)
    assert pred.pixel_sizes == sd.pixel_sizes == pytest.approx(PIXELS)
    assert sd.data.dtype == np.float32 and pred.channel_names == ["DNA (predicted)"]
    assert sd.channel_names == ["DNA (predicted SD)"]
    ref_mean, ref_sd = members_mean_sd(packages[:2], data)
    np.testing.assert_allclose(pred.data, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd.data, ref_sd, rtol=1e-4, atol=1e-6)
    prov_sd = read_provenance(out / "cells_prediction_sd.ome.tif")
    assert prov_sd["prediction_kind"].startswith("standard deviation across 2 ensemble members (ddof=1)")
    assert prov_sd["ensemble_members"] == 2 and prov_sd["input_file"] == str(src.resolve())
    assert prov_sd["ensemble_member_sources"] == f"{packages[0]}; {packages[1]}"
    prov = read_provenance(out / "cells_prediction.ome.tif")
    assert prov["prediction_kind"] == "mean of 2 ensemble members"
    assert prov["uncertainty_file"] == str(out / "cells_prediction_sd.ome.tif")
    rows = summary_rows(out)
    assert len(rows) == 1 and rows[0]["status"] == "ok"

    # the SD file is an output like the prediction: a rerun refuses to replace it
    rc, stdout, _ = run(["--model", str(packages[0]), "--model", str(packages[1]), str(src), "--out", str(out),
                         "--uncertainty"], capsys, caplog)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 1 and len(errors) == 1 and "cells_prediction.ome.tif: the prediction exists already" in errors[0]
    assert summary_rows(out)[0]["status"] == "ok"  # the summary keeps describing the outputs in the folder


def test_ensemble_folder_and_resume_of_missing_sd(tmp_path, packages, signal, capsys, caplog):
    src, data = signal
    write_ensemble(tmp_path / "ens", packages, name="dna-ensemble")
    out = tmp_path / "out"
    # without --uncertainty: the mean only
    rc, stdout, _ = run(["--model", str(tmp_path / "ens"), str(src), "--out", str(out)], capsys, caplog)
    assert rc == 0 and "ensemble of 3 models" in stdout and "no SD map (add --uncertainty)" in stdout
    assert (out / "cells_prediction.ome.tif").is_file() and not (out / "cells_prediction_sd.ome.tif").exists()
    # --skip-existing predicts again when the SD map is missing
    rc, _, _ = run(["--model", str(tmp_path / "ens"), str(src), "--out", str(out), "--uncertainty",
                    "--skip-existing"], capsys, caplog)
    assert rc == 0 and summary_rows(out)[0]["status"] == "ok"
    ref_mean, ref_sd = members_mean_sd(packages, data)
    np.testing.assert_allclose(read_image(out / "cells_prediction_sd.ome.tif").data, ref_sd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(read_image(out / "cells_prediction.ome.tif").data, ref_mean, rtol=1e-5, atol=1e-6)
    assert read_provenance(out / "cells_prediction_sd.ome.tif")["model"] == "dna-ensemble"
    # now both exist: skipped
    rc, stdout, _ = run(["--model", str(tmp_path / "ens"), str(src), "--out", str(out), "--uncertainty",
                         "--skip-existing"], capsys, caplog)
    assert rc == 0 and "0 of 1 image(s) predicted, 1 skipped (exist)" in stdout


def test_ome_zarr_sd_map(tmp_path, packages, signal, capsys, caplog):
    src, data = signal
    out = tmp_path / "out"
    rc, _, _ = run(["--model", str(packages[0]), "--model", str(packages[2]), str(src), "--out", str(out),
                    "--uncertainty", "--output-format", "ome-zarr"], capsys, caplog)
    assert rc == 0
    sd = read_image(out / "cells_prediction_sd.ome.zarr")
    assert sd.data.shape == (1, 40, 33) and sd.pixel_sizes == pytest.approx(PIXELS)
    np.testing.assert_allclose(sd.data, members_mean_sd([packages[0], packages[2]], data)[1], rtol=1e-4, atol=1e-6)


def test_one_model_with_uncertainty_is_refused_in_one_line(tmp_path, packages, signal, capsys, caplog):
    src, _ = signal
    rc, _, err = run(["--model", str(packages[0]), str(src), "--out", str(tmp_path / "out"), "--uncertainty"],
                     capsys, caplog)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labelfree predict: error: --uncertainty needs an ensemble")
    assert not (tmp_path / "out").exists()


def test_mismatched_members_are_refused_in_one_line(tmp_path, packages, signal, capsys, caplog):
    src, _ = signal
    odd = make_package(tmp_path / "odd", 5, target_transforms=())
    rc, _, err = run(["--model", str(packages[0]), "--model", str(odd), str(src), "--out", str(tmp_path / "out"),
                      "--uncertainty"], capsys, caplog)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("labelfree predict: error: ensemble members differ in target_transforms: member 0 (")
    assert not (tmp_path / "out" / "cells_prediction.ome.tif").exists()


def test_summary_records_the_sd_map_and_its_calibration(tmp_path, packages, signal, capsys, caplog):
    src, data = signal
    target = (np.random.default_rng(8).random((40, 33)) * 900 + 30).astype(np.uint16)
    tpath = write_ome_tiff(tmp_path / "target.ome.tif", target[None], axes="CYX", channel_names=["DNA"],
                           pixel_sizes=PIXELS)
    out = tmp_path / "out"
    rc, _, _ = run(["--model", str(packages[0]), "--model", str(packages[1]), str(src), "--target", str(tpath),
                    "--out", str(out), "--uncertainty"], capsys, caplog)
    assert rc == 0
    row = summary_rows(out)[0]
    assert row["path_uncertainty"] == str(out / "cells_prediction_sd.ome.tif")
    mean, sd = members_mean_sd(packages[:2], data)
    assert float(row["mean_sd"]) == pytest.approx(float(sd.mean()), rel=1e-4)
    z = (target - target.mean()) / target.std()  # the package's target transform: normalize
    err = np.abs(z - mean[0])
    assert float(row["coverage_68"]) == pytest.approx(np.mean(err <= 0.99446 * sd[0]), abs=2 / err.size)
    assert float(row["coverage_95"]) == pytest.approx(np.mean(err <= 1.95996 * sd[0]), abs=2 / err.size)
    import scipy.stats

    rho = scipy.stats.spearmanr(sd[0].ravel(), err.ravel()).statistic
    assert float(row["spearman_sd_abs_error"]) == pytest.approx(rho, abs=1e-3)
    # without --uncertainty the columns stay empty
    rc, _, _ = run(["--model", str(packages[0]), str(src), "--target", str(tpath), "--out", str(tmp_path / "one")],
                   capsys, caplog)
    row = summary_rows(tmp_path / "one")[0]
    assert rc == 0 and row["path_uncertainty"] == row["mean_sd"] == row["coverage_68"] == ""
