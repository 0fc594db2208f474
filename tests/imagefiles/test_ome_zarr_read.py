"""Reading OME-Zarr (NGFF 0.4 / zarr v2 and 0.5 / zarr v3) images and HCS plates written by ome-zarr-py (issue 14)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("ome_zarr")

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import describe_image, read_image
from labelfree_jax.imagefiles.manifest import read_manifest
from tests.imagefiles.ome_zarr_fixtures import UNITS, write_image, write_plate

VERSIONS = ("0.4", "0.5")


def _data(shape, seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def _level0(image) -> str:
    """The level-0 dataset path the metadata names (ome-zarr-py calls it ``s0`` or ``0`` depending on version)."""
    meta = image / ".zattrs"
    doc = json.loads(meta.read_text()) if meta.is_file() else json.loads((image / "zarr.json").read_text())["attributes"]
    return (doc.get("ome") or doc)["multiscales"][0]["datasets"][0]["path"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("version", VERSIONS)
def test_image_level0_axes_units_channel_names(tmp_path, version):
    data = _data((2, 5, 40, 36))
    p = write_image(tmp_path / "cell.ome.zarr", data, version=version, scale={"c": 1.0, "z": 0.29, "y": 0.108,
                    "x": 0.108}, units=UNITS, channel_names=["Bright", "DNA"], chunks=(1, 2, 16, 16))
    info = describe_image(p)
    assert info.format == "OME-Zarr" and info.n_scenes == 1 and info.plate is None
    s = info.scenes[0]
    assert s.axes == "CZYX" and s.shape == (2, 5, 40, 36) and s.dtype == np.uint16 and s.n_time == 1
    assert s.channel_names == ("Bright", "DNA") and s.warnings == ()
    assert s.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
    im = read_image(p)
    assert im.axes == "CZYX" and im.scene is None and im.warnings == ()
    np.testing.assert_array_equal(im.data, data)  # level 0, not the downsampled level
    assert im.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
    dna = read_image(p, channels="DNA")
    np.testing.assert_array_equal(dna.data, data[1:2])


def test_nanometre_units_are_converted(tmp_path):
    p = write_image(tmp_path / "nm.ome.zarr", _data((1, 3, 16, 16)), scale={"c": 1.0, "z": 290.0, "y": 108.0,
                    "x": 108.0}, units={"z": "nanometer", "y": "nanometer", "x": "nanometer"})
    assert read_image(p).pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})


def test_no_units_means_unknown_pixel_sizes_with_a_warning(tmp_path, caplog):
    p = write_image(tmp_path / "nounit.ome.zarr", _data((1, 3, 16, 16)), scale={"c": 1.0, "z": 0.29, "y": 0.108,
                    "x": 0.108})
    im = read_image(p)
    assert im.pixel_sizes is None
    expected = "space axes without a unit: pixel size unknown along z, y, x (scale z=0.29, y=0.108, x=0.108 in unknown units)"
    assert im.warnings == (expected,)
    assert any(str(p) in r.getMessage() and "without a unit" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("version", VERSIONS)
def test_2d_yx_and_time_series(tmp_path, version):
    plane = _data((30, 20), seed=1)
    p2 = write_image(tmp_path / "plane.ome.zarr", plane, version=version, axes="yx")
    im = read_image(p2)
    assert im.axes == "CYX" and im.data.shape == (1, 30, 20)
    np.testing.assert_array_equal(im.data[0], plane)
    series = _data((3, 2, 1, 24, 20), seed=2)  # t, c, z=1, y, x
    pt = write_image(tmp_path / "series.ome.zarr", series, version=version, axes="tczyx")
    info = describe_image(pt)
    assert info.scenes[0].n_time == 3 and info.scenes[0].axes == "CYX" and info.scenes[0].shape == (2, 24, 20)
    with pytest.raises(InputError) as err:
        read_image(pt)
    assert "time series with 3 time points" in _one_line(err) and "--time" in str(err.value)
    np.testing.assert_array_equal(read_image(pt, time=2).data, series[2, :, 0])


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_every_field_named_row_column_field(tmp_path, version):
    fields = {
        "A/1": [_data((1, 2, 16, 18), seed=10), _data((1, 2, 16, 18), seed=11)],
        "A/2": [_data((1, 2, 16, 18), seed=12)],
        "B/2": [_data((1, 2, 16, 18), seed=13)],
    }
    p = write_plate(tmp_path / "plate.ome.zarr", fields, version=version, scale={"c": 1.0, "z": 0.5, "y": 0.2,
                    "x": 0.2}, channel_names=["Bright"])
    info = describe_image(p)
    assert info.format == "OME-Zarr plate"
    assert [s.name for s in info.scenes] == ["A/1/0", "A/1/1", "A/2/0", "B/2/0"]
    assert info.plate.rows == ("A", "B") and info.plate.columns == ("1", "2")
    assert info.plate.wells == ("A/1", "A/2", "B/2") and info.plate.fields["A/1"] == ("0", "1")
    assert info.plate.version == version
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = _one_line(err)
    assert "4 scenes" in msg and "'A/1/0'" in msg and "--scene" in msg
    im = read_image(p, scene="A/1/1")
    assert im.scene == "A/1/1" and im.channel_names == ["Bright"]
    assert im.pixel_sizes == pytest.approx({"z": 0.5, "y": 0.2, "x": 0.2})
    np.testing.assert_array_equal(im.data, fields["A/1"][1])
    np.testing.assert_array_equal(read_image(p, scene=3).data, fields["B/2"][0])
    # a well on its own: its fields by path
    well = describe_image(p / "A" / "1")
    assert [s.name for s in well.scenes] == ["0", "1"]
    np.testing.assert_array_equal(read_image(p / "A" / "1", scene="1").data, fields["A/1"][1])


def test_manifest_accepts_ome_zarr_folders(tmp_path):
    p = write_image(tmp_path / "sig.ome.zarr", _data((1, 2, 16, 16)))
    csv = tmp_path / "m.csv"
    csv.write_text(f"path_signal,path_target\n{p},{p}\n")
    rows = read_manifest(csv)
    assert rows[0].signal == p and rows[0].target == p


# ----------------------------------------------------------------------------- one-line refusals


def test_missing_chunks_refused_with_one_line(tmp_path, monkeypatch):
    data = _data((1, 2, 32, 32)) + 1
    p = write_image(tmp_path / "holes.ome.zarr", data, chunks=(1, 1, 16, 16))
    level0 = _level0(p)
    chunk = next(q for q in sorted((p / level0).rglob("*")) if q.is_file() and not q.name.startswith(".")
                 and q.name != "zarr.json")
    chunk.unlink()
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = _one_line(err)
    assert msg.startswith(f"{p}: level 0 ({level0}) has 1 of 8 chunks missing") and "LABELFREE_ZARR_ALLOW_MISSING_CHUNKS" in msg
    monkeypatch.setenv("LABELFREE_ZARR_ALLOW_MISSING_CHUNKS", "1")
    assert (read_image(p).data == 0).sum() == 16 * 16


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_ngff_version_refused(tmp_path, version):
    p = write_image(tmp_path / "v.ome.zarr", _data((1, 2, 16, 16)), version=version)
    meta = p / (".zattrs" if version == "0.4" else "zarr.json")
    doc = json.loads(meta.read_text())
    if version == "0.4":
        doc["multiscales"][0]["version"] = "0.9"
    else:
        doc["attributes"]["ome"]["version"] = "0.9"
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError) as err:
        describe_image(p)
    assert _one_line(err) == f"{p}: OME-NGFF version '0.9' is not supported; supported: 0.4, 0.5"


def test_axes_the_model_cannot_use(tmp_path):
    p = write_image(tmp_path / "angle.ome.zarr", _data((1, 2, 16, 16)))
    meta = p / ".zattrs"
    doc = json.loads(meta.read_text())
    doc["multiscales"][0]["axes"][1] = {"name": "angle", "type": "angle"}
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError) as err:
        read_image(p)
    assert _one_line(err).startswith(f"{p}: axis 'angle' (type 'angle') cannot be used")


def test_not_ome_and_axes_argument(tmp_path):
    import zarr

    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    with pytest.raises(InputError) as err:
        read_image(plain)
    assert _one_line(err) == f"{plain}: no OME-NGFF metadata (multiscales, plate or well) in this zarr group"
    p = write_image(tmp_path / "ok.ome.zarr", _data((1, 2, 16, 16)))
    with pytest.raises(InputError) as err:
        read_image(p, axes="ZYX")
    assert "OME-Zarr names its axes" in _one_line(err)


def test_plate_with_a_broken_field_fails_only_that_field(tmp_path):
    fields = {"A/1": [_data((1, 2, 16, 16), seed=1)], "A/2": [_data((1, 2, 16, 16), seed=2)]}
    p = write_plate(tmp_path / "plate.ome.zarr", fields)
    field = p / "A" / "2" / "0"
    shutil.rmtree(field / _level0(field))  # level 0 of one field gone
    info = describe_image(p)
    assert [s.name for s in info.scenes] == ["A/1/0"] and list(info.plate.unreadable) == ["A/2/0"]
    np.testing.assert_array_equal(read_image(p, scene="A/1/0").data, fields["A/1"][0])
    with pytest.raises(InputError) as err:
        read_image(p, scene="A/2/0")
    msg = _one_line(err)
    assert msg.startswith(f"{field}: cannot read the multiscale image: ") and msg == info.plate.unreadable["A/2/0"]
