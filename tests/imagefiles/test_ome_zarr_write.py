"""Writing OME-Zarr predictions (issue 14): multiscale, chunked, axes/units/channel names, provenance, atomic, plates."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ome_zarr")

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import (
    PlateLayout,
    describe_image,
    read_image,
    read_provenance,
    write_ome_zarr,
    write_plate_layout,
)

VERSIONS = ("0.4", "0.5")


def _validate(path, version, kind="Image"):
    """Validated against the NGFF schema by ome-zarr-models (raises on invalid metadata)."""
    import zarr
    from ome_zarr_models import v04, v05

    getattr({"0.4": v04, "0.5": v05}[version], kind).from_zarr(zarr.open_group(str(path), mode="r"))


def _ome_reader_node(path):
    """ome-zarr-py's own view of what we wrote."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return next(iter(Reader(parse_url(str(path)))()))


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_multiscale_with_metadata(tmp_path, version):
    data = np.random.default_rng(0).normal(size=(1, 6, 260, 140)).astype(np.float32)
    p = tmp_path / "cell_prediction.ome.zarr"
    prov = {"model": "dna", "input_file": "/data/cell.tif", "input_time": None, "working_pixel_size_x_um": 0.29}
    write_ome_zarr(p, data, channel_names=["DNA (predicted)"], pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108},
                   provenance=prov, ngff_version=version, chunks=(1, 4, 128, 128))
    im = read_image(p)
    np.testing.assert_array_equal(im.data, data)
    assert im.channel_names == ["DNA (predicted)"] and im.warnings == ()
    assert im.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
    assert read_provenance(p) == prov
    node = _ome_reader_node(p)  # ome-zarr-py reads it: 2 levels (140 // 2 = 70 >= 64, 140 // 4 < 64)
    assert [d.shape for d in node.data] == [(1, 6, 260, 140), (1, 6, 130, 70)]
    assert node.data[0].chunksize == (1, 4, 128, 128)
    assert node.metadata["channel_names"] == ["DNA (predicted)"]
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"] and axes[3]["unit"] == "micrometer"
    scale1 = node.metadata["coordinateTransformations"][1][0]["scale"]
    assert scale1 == pytest.approx([1.0, 0.29, 0.216, 0.216])
    assert not [q for q in tmp_path.iterdir() if ".tmp-" in q.name]
    _validate(p, version)


def test_2d_unknown_pixel_sizes_and_overwrite(tmp_path):
    p = tmp_path / "plane.ome.zarr"
    write_ome_zarr(p, np.ones((2, 20, 30), np.uint16))
    im = read_image(p)
    assert im.axes == "CYX" and im.pixel_sizes is None and im.channel_names is None
    write_ome_zarr(p, np.full((1, 20, 30), 7, np.uint16))  # replaces the old folder whole
    np.testing.assert_array_equal(read_image(p).data, np.full((1, 20, 30), 7, np.uint16))
    assert read_provenance(p) == {}
    assert sorted(q.name for q in tmp_path.iterdir()) == ["plane.ome.zarr"]


def test_all_zero_chunks_are_written(tmp_path):
    p = tmp_path / "zeros.ome.zarr"
    write_ome_zarr(p, np.zeros((1, 40, 40), np.float32), chunks=(1, 16, 16))
    np.testing.assert_array_equal(read_image(p).data, 0)  # no "missing chunks" refusal


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import labelfree_jax.imagefiles.zarr_write as zw

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zw, "_replace_folder", boom)
    p = tmp_path / "x.ome.zarr"
    with pytest.raises(InputError) as err:
        write_ome_zarr(p, np.ones((1, 8, 8), np.float32))
    assert str(err.value) == f"{p}: writing the OME-Zarr failed: OSError: disk full"
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_one_line(tmp_path):
    with pytest.raises(InputError, match="cannot write OME-NGFF version '0.3'"):
        write_ome_zarr(tmp_path / "a.ome.zarr", np.ones((1, 8, 8), np.float32), ngff_version="0.3")
    with pytest.raises(InputError, match="1 channel"):
        write_ome_zarr(tmp_path / "a.ome.zarr", np.ones((1, 8, 8), np.float32), channel_names=["a", "b"])
    (tmp_path / "file.ome.zarr").write_text("not a folder")
    with pytest.raises(InputError, match="is not a zarr folder"):
        write_ome_zarr(tmp_path / "file.ome.zarr", np.ones((1, 8, 8), np.float32))


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_layout_then_fields(tmp_path, version):
    layout = PlateLayout(name="p1", rows=("A", "B"), columns=("1", "2"), wells=("A/1", "B/2"),
                         fields={"A/1": ("0", "1"), "B/2": ("0",)}, version="0.4")
    p = tmp_path / "plate_prediction.ome.zarr"
    write_plate_layout(p, layout, ngff_version=version, provenance={"model": "dna"})
    assert write_plate_layout(p, layout, ngff_version=version) == p  # reused, not recreated
    stale = p / "A" / "1" / f"1.tmp-{2**22 + 12345}-abcdef01"
    stale.mkdir()
    write_plate_layout(p, layout, ngff_version=version)
    assert not stale.exists()  # a killed run's unfinished field is removed
    fields = {}
    for name in ("A/1/0", "A/1/1", "B/2/0"):
        fields[name] = np.random.default_rng(len(fields)).random((1, 3, 20, 24)).astype(np.float32)
        write_ome_zarr(p / name, fields[name], pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108}, ngff_version=version)
    info = describe_image(p)
    assert info.format == "OME-Zarr plate" and [s.name for s in info.scenes] == list(fields)
    assert info.plate.wells == ("A/1", "B/2") and info.plate.rows == ("A", "B")
    for name, data in fields.items():
        np.testing.assert_array_equal(read_image(p, scene=name).data, data)
    assert read_provenance(p) == {"model": "dna"}
    _validate(p, version, "HCS")
    other = PlateLayout(name=None, rows=("A",), columns=("1",), wells=("A/1",), fields={"A/1": ("0",)}, version="0.4")
    with pytest.raises(InputError, match="not a plate with the input's layout"):
        write_plate_layout(p, other, ngff_version=version)


def test_plate_write_is_exclusive_of_stale_pids(tmp_path):
    """A temporary of a live process (this one) is not removed by the reuse path."""
    layout = PlateLayout(name=None, rows=("A",), columns=("1",), wells=("A/1",), fields={"A/1": ("0",)}, version="0.4")
    p = write_plate_layout(tmp_path / "p.ome.zarr", layout)
    live = p / "A" / "1" / f"0.tmp-{os.getpid()}-abcdef01"
    live.mkdir()
    write_plate_layout(p, layout)
    assert live.exists()
