"""``labelfree predict`` on OME-Zarr images and HCS plates (issue 14): inputs written by ome-zarr-py itself,
OME-Zarr predictions (multiscale, provenance, plate layout), atomic and resumable per image, --output-format."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("ome_zarr")

from labelfree_jax.imagefiles import describe_image, read_image, read_provenance
from labelfree_jax.inference.model import load_package
from labelfree_jax.inference.predict import predict_array
from tests.cli.test_predict_contract import WORKING, make_package, one_channel, predict, stack, summary
from tests.imagefiles.ome_zarr_fixtures import UNITS, write_image, write_plate

SCALE = {"c": 1.0, **WORKING}


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny")


def _expected(pkg, data):
    return predict_array(load_package(pkg), data[None], pixel_sizes=WORKING, progress=False)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_image_in_ome_zarr_out(tmp_path, pkg, capsys, caplog, version):
    src = write_image(tmp_path / "cell.ome.zarr", stack(5)[None], version=version, scale=SCALE, units=UNITS,
                      channel_names=["Bright"])
    out = tmp_path / "out"
    rc, stdout, _, _ = predict(["--model", str(pkg), str(src), "--out", str(out)], capsys, caplog)
    assert rc == 0 and "1 of 1 image(s) predicted" in stdout
    pred_path = out / "cell_prediction.ome.zarr"
    pred = read_image(pred_path)
    np.testing.assert_array_equal(pred.data, _expected(pkg, stack(5)))
    assert pred.channel_names == ["DNA (predicted)"] and pred.pixel_sizes == pytest.approx(WORKING)
    prov = read_provenance(pred_path)
    assert prov["input_file"] == os.path.abspath(src) and prov["model"] == "tiny-dna"
    row = summary(out)[0]
    assert row["status"] == "ok" and row["path_prediction"] == str(pred_path) and row["warnings"] == ""
    # --output-format ome-tiff for the same input
    rc, *_ = predict(["--model", str(pkg), str(src), "--out", str(out / "tif"), "--output-format", "ome-tiff"],
                     capsys, caplog)
    assert rc == 0
    np.testing.assert_array_equal(read_image(out / "tif" / "cell_prediction.ome.tif").data, pred.data)


def test_tiff_in_ome_zarr_out_and_folder_listing(tmp_path, pkg, capsys, caplog):
    (tmp_path / "in").mkdir()
    one_channel(tmp_path / "in" / "a.ome.tif", seed=1)
    write_image(tmp_path / "in" / "b.ome.zarr", stack(2)[None], scale=SCALE, units=UNITS)
    rc, *_ = predict(["--model", str(pkg), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                      "--output-format", "ome-zarr"], capsys, caplog)
    assert rc == 0
    written = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.endswith(".ome.zarr"))
    assert written == ["a_prediction.ome.zarr", "b_prediction.ome.zarr"]
    np.testing.assert_array_equal(read_image(tmp_path / "o" / "a_prediction.ome.zarr").data, _expected(pkg, stack(1)))


def _plate(tmp_path, version="0.4"):
    fields = {"A/1": [stack(10)[None], stack(11)[None]], "B/2": [stack(12)[None]]}
    return write_plate(tmp_path / "plate.ome.zarr", fields, version=version, scale=SCALE), fields


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_plate_in_plate_out_same_layout(tmp_path, pkg, capsys, caplog, version):
    src, fields = _plate(tmp_path, version)
    out = tmp_path / "out"
    rc, stdout, _, _ = predict(["--model", str(pkg), str(src), "--out", str(out)], capsys, caplog)
    assert rc == 0 and "3 of 3 image(s) predicted" in stdout
    plate = out / "plate_prediction.ome.zarr"
    info = describe_image(plate)
    assert info.format == "OME-Zarr plate" and [s.name for s in info.scenes] == ["A/1/0", "A/1/1", "B/2/0"]
    assert info.plate.rows == ("A", "B") and info.plate.columns == ("1", "2") and info.plate.wells == ("A/1", "B/2")
    for name, data in (("A/1/0", fields["A/1"][0]), ("A/1/1", fields["A/1"][1]), ("B/2/0", fields["B/2"][0])):
        np.testing.assert_array_equal(read_image(plate, scene=name).data, _expected(pkg, data[0]))
        assert read_provenance(plate / name)["input_scene"] == name
    rows = summary(out)
    assert [r["scene"] for r in rows] == ["A/1/0", "A/1/1", "B/2/0"]
    assert rows[1]["path_prediction"] == str(plate / "A/1/1")


def test_plate_subset_by_pattern_resume_and_refuse(tmp_path, pkg, capsys, caplog):
    src, _ = _plate(tmp_path)
    out = tmp_path / "out"
    plate = out / "plate_prediction.ome.zarr"
    rc, stdout, _, _ = predict(["--model", str(pkg), str(src), "--out", str(out), "--scene", "A/*/*"], capsys, caplog)
    assert rc == 0 and "2 of 2 image(s) predicted" in stdout
    assert not (plate / "B" / "2" / "0").exists() and (plate / "A" / "1" / "1").is_dir()
    before = read_image(plate, scene="A/1/0").data
    # a killed run: one field half-written under a temporary name of a dead process, one field gone
    shutil.rmtree(plate / "A" / "1" / "1")
    stale = plate / "A" / "1" / f"1.tmp-{2**22 + 4321}-0123abcd"
    stale.mkdir()
    rc, stdout, _, _ = predict(["--model", str(pkg), str(src), "--out", str(out), "--skip-existing"], capsys, caplog)
    assert rc == 0 and "2 of 3 image(s) predicted, 1 skipped" in stdout
    assert not stale.exists()
    np.testing.assert_array_equal(read_image(plate, scene="A/1/0").data, before)
    assert describe_image(plate).n_scenes == 3
    rc, stdout, _, errors = predict(["--model", str(pkg), str(src), "--out", str(out), "--scene", "B/2/0"],
                                    capsys, caplog)
    assert rc == 1 and "the prediction exists already" in errors[0].getMessage()


def test_plate_broken_field_fails_alone(tmp_path, pkg, capsys, caplog):
    src, _ = _plate(tmp_path)
    level0 = next(p for p in (src / "A" / "1" / "1").iterdir() if p.is_dir())
    shutil.rmtree(level0)
    out = tmp_path / "out"
    rc, stdout, _, errors = predict(["--model", str(pkg), str(src), "--out", str(out)], capsys, caplog)
    assert rc == 1 and "2 of 3 image(s) predicted, 1 failed" in stdout
    assert len(errors) == 1 and f"{src / 'A' / '1' / '1'}: cannot read the multiscale image" in errors[0].getMessage()
    rows = summary(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"] and rows[1]["scene"] == "A/1/1"


def test_bad_ngff_version_is_one_error_row(tmp_path, pkg, capsys, caplog):
    import json

    src = write_image(tmp_path / "v.ome.zarr", stack(1)[None])
    doc = json.loads((src / ".zattrs").read_text())
    doc["multiscales"][0]["version"] = "0.7"
    (src / ".zattrs").write_text(json.dumps(doc))
    ok = one_channel(tmp_path / "ok.ome.tif")
    rc, stdout, _, errors = predict(["--model", str(pkg), str(src), str(ok), "--out", str(tmp_path / "o")],
                                    capsys, caplog)
    assert rc == 1 and "1 of 2 image(s) predicted, 1 failed" in stdout
    assert errors[0].getMessage() == f"{src}: prediction failed: OME-NGFF version '0.7' is not supported; supported: " \
                                     "0.4, 0.5"


def test_stream_flag_streams_and_refusals_are_one_line(tmp_path, pkg, capsys, caplog):
    src = write_image(tmp_path / "cell.ome.zarr", stack(7)[None], scale=SCALE, units=UNITS)
    rc, stdout, _, _ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "s"), "--stream"],
                               capsys, caplog)
    assert rc == 0 and "1 of 1 image(s) predicted" in stdout
    streamed = read_image(tmp_path / "s" / "cell_prediction.ome.zarr").data
    # the same prediction as in memory, to float32 rounding of the z-scored input (statistics summed in chunks)
    np.testing.assert_allclose(streamed, _expected(pkg, stack(7)), rtol=0, atol=1e-5)
    # TTA cannot be streamed: the image fails with one line saying why, nothing half-written is left
    rc, _, stderr, _ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "t"), "--stream", "--tta"],
                               capsys, caplog)
    assert rc == 1 and "test-time augmentation (tta) is not streamed" in summary(tmp_path / "t")[0]["error"]
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.endswith(".ome.zarr")]
