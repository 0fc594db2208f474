"""Tests for labelfree_jax.imagefiles.read: TIFF / OME-TIFF / ImageJ reading, atomic OME-TIFF writing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import labelfree_jax.imagefiles.write as lio
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image, read_array, read_image, write_ome_tiff

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _ramp(shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 4093).astype(dtype).reshape(shape)


# ----------------------------------------------------------------------------- OME round trip


@pytest.mark.parametrize(
    "shape,axes,names,ps,dtype",
    [
        ((2, 5, 12, 9), "CZYX", ["bright", "dna"], {"z": 0.29, "y": 0.108, "x": 0.108}, np.uint16),
        ((3, 12, 9), "CYX", ["dapi", "map2", "nfh"], {"y": 0.5, "x": 0.25}, np.float32),
        ((1, 4, 12, 9), "CZYX", ["only"], None, np.float64),
        ((2, 12, 9), "CYX", None, {"y": 1.5, "x": 1.5}, np.uint8),
        # X of 3 or 4 must not be mistaken for RGB(A) samples
        ((3, 2, 4, 3), "CZYX", ["a", "b", "c"], None, np.int16),
        ((1, 4, 4), "CYX", None, {"y": 2.0, "x": 2.0}, np.int32),
    ],
)
def test_ome_round_trip(tmp_path, shape, axes, names, ps, dtype):
    data = _ramp(shape, dtype)
    out = write_ome_tiff(tmp_path / "img.ome.tif", data, channel_names=names, pixel_sizes=ps)
    assert out == tmp_path / "img.ome.tif"
    im = read_image(out)
    assert isinstance(im, Image)
    assert im.axes == axes and im.ndim_spatial == len(axes) - 1
    assert im.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(im.data, data)
    assert im.channel_names == names
    assert im.pixel_sizes == (pytest.approx(ps) if ps else None)
    assert im.path == out
    assert sorted(os.listdir(tmp_path)) == ["img.ome.tif"]  # no temp file left behind


def test_write_without_channel_axis(tmp_path):
    zyx = _ramp((4, 10, 11))
    im = read_image(write_ome_tiff(tmp_path / "a.tif", zyx, axes="ZYX", pixel_sizes={"z": 1, "y": 2, "x": 3}))
    assert im.axes == "CZYX" and im.data.shape == (1, 4, 10, 11)
    assert im.pixel_sizes == {"z": 1.0, "y": 2.0, "x": 3.0}
    np.testing.assert_array_equal(im.data[0], zyx)
    yx = _ramp((10, 11))
    im = read_image(write_ome_tiff(tmp_path / "b.tif", yx))
    assert im.axes == "CYX" and im.data.shape == (1, 10, 11)


def test_ome_units_converted_to_um(tmp_path):
    p = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        p,
        _ramp((3, 8, 9)),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 250.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.001,
            "PhysicalSizeZUnit": "mm",
        },
    )
    im = read_image(p)
    assert im.axes == "CZYX" and im.data.shape == (1, 3, 8, 9)
    assert im.pixel_sizes == pytest.approx({"z": 1.0, "y": 0.25, "x": 0.25})


def test_write_validation(tmp_path):
    d = _ramp((2, 3, 4, 5))
    with pytest.raises(InputError, match="2 channel\\(s\\) but channel_names"):
        write_ome_tiff(tmp_path / "a.tif", d, channel_names=["one"])
    with pytest.raises(InputError, match="pixel size axis 'q'"):
        write_ome_tiff(tmp_path / "a.tif", d, pixel_sizes={"q": 1.0})
    with pytest.raises(InputError, match="must be a positive number"):
        write_ome_tiff(tmp_path / "a.tif", d, pixel_sizes={"x": -1.0})
    with pytest.raises(InputError, match="does not match axes 'CYX'"):
        write_ome_tiff(tmp_path / "a.tif", d, axes="CYX")
    with pytest.raises(InputError, match="axes must be"):
        write_ome_tiff(tmp_path / "a.tif", d, axes="TZYX")
    with pytest.raises(InputError, match="folder .* does not exist"):
        write_ome_tiff(tmp_path / "missing" / "a.tif", d)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("dtype", [np.int64, np.complex64, object])
def test_atomic_write_bad_dtype(tmp_path, dtype):
    dest = tmp_path / "out.ome.tif"
    dest.write_bytes(b"previous content")
    with pytest.raises(InputError, match=f"{dest}.*cannot write dtype"):
        write_ome_tiff(dest, np.zeros((1, 4, 4), dtype=dtype))
    assert os.listdir(tmp_path) == ["out.ome.tif"]
    assert dest.read_bytes() == b"previous content"


def test_atomic_write_failure_midway(tmp_path, monkeypatch):
    dest = tmp_path / "out.ome.tif"
    dest.write_bytes(b"previous content")
    seen = []

    def failing_imwrite(path, data, **kw):
        seen.append(Path(path))
        Path(path).write_bytes(b"II*\x00partial")  # a partial file, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(lio.tifffile, "imwrite", failing_imwrite)
    with pytest.raises(InputError, match="out.ome.tif: writing the OME-TIFF failed: OSError: disk full"):
        write_ome_tiff(dest, _ramp((1, 4, 4)))
    # it wrote to a temp file in the same folder, and removed it
    assert len(seen) == 1 and seen[0].parent == tmp_path and seen[0].name.startswith("out.ome.tif.tmp-")
    assert os.listdir(tmp_path) == ["out.ome.tif"]
    assert dest.read_bytes() == b"previous content"


# ----------------------------------------------------------------------------- layouts


def test_imagej_zcyx_to_czyx(tmp_path):
    zcyx = _ramp((4, 2, 8, 9), np.uint8)
    p = tmp_path / "ij.tif"
    tifffile.imwrite(
        p, zcyx, imagej=True, resolution=(2.0, 4.0), metadata={"axes": "ZCYX", "spacing": 3.0, "unit": "um"}
    )
    im = read_image(p)
    assert im.axes == "CZYX" and im.data.shape == (2, 4, 8, 9)
    np.testing.assert_array_equal(im.data, zcyx.transpose(1, 0, 2, 3))
    assert im.pixel_sizes == pytest.approx({"z": 3.0, "y": 0.25, "x": 0.5})
    assert im.channel_names is None


def test_imagej_tzcyx_single_timepoint(tmp_path):
    tzcyx = _ramp((1, 3, 2, 8, 9), np.uint16)
    p = tmp_path / "t1.tif"
    tifffile.imwrite(p, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    im = read_image(p)
    assert im.axes == "CZYX" and im.data.shape == (2, 3, 8, 9)
    np.testing.assert_array_equal(im.data, tzcyx[0].transpose(1, 0, 2, 3))
    p2 = tmp_path / "t2.tif"
    tifffile.imwrite(p2, _ramp((2, 3, 2, 8, 9)), imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(InputError, match="t2.tif: time series with 2 time points"):
        read_image(p2)


def test_plain_tiffs(tmp_path):
    zyx = _ramp((5, 8, 9))
    p = tmp_path / "plain3d.tif"
    tifffile.imwrite(p, zyx, metadata=None)
    im = read_image(p)
    assert im.axes == "CZYX" and im.data.shape == (1, 5, 8, 9)  # default: ZYX, one channel
    np.testing.assert_array_equal(im.data[0], zyx)
    im = read_image(p, axes="CYX")
    assert im.axes == "CYX" and im.data.shape == (5, 8, 9)
    np.testing.assert_array_equal(im.data, zyx)
    im = read_image(p, axes="zyx")
    assert im.axes == "CZYX" and im.data.shape == (1, 5, 8, 9)
    with pytest.raises(InputError, match="plain3d.tif: axes='CZYX' has 4 letters but the stored array has 3"):
        read_image(p, axes="CZYX")
    with pytest.raises(InputError, match="unknown letters \\['Q'\\]"):
        read_image(p, axes="QYX")
    with pytest.raises(InputError, match="repeats a letter"):
        read_image(p, axes="YYX")
    with pytest.raises(InputError, match="must contain Y and X"):
        read_image(p, axes="CZY")

    yx = _ramp((8, 9))
    p2 = tmp_path / "plain2d.tif"
    tifffile.imwrite(p2, yx)
    im = read_image(p2)
    assert im.axes == "CYX" and im.data.shape == (1, 8, 9) and im.pixel_sizes is None


def test_rgb_samples_become_channels(tmp_path):
    rgb = _ramp((8, 9, 3), np.uint8)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rgb, photometric="rgb")
    im = read_image(p)
    assert im.axes == "CYX" and im.data.shape == (3, 8, 9)
    np.testing.assert_array_equal(im.data, rgb.transpose(2, 0, 1))


def test_read_array_is_float32(tmp_path):
    p = write_ome_tiff(tmp_path / "a.tif", _ramp((2, 8, 9)))
    a = read_array(p, channels=1)
    assert a.dtype == np.float32 and a.shape == (1, 8, 9)
    np.testing.assert_array_equal(a[0], _ramp((2, 8, 9))[1].astype(np.float32))


# ----------------------------------------------------------------------------- channels


def test_channel_selection(tmp_path):
    data = _ramp((3, 2, 8, 9))
    p = write_ome_tiff(tmp_path / "c.ome.tif", data, channel_names=["dapi", "map2", "nfh"])
    im = read_image(p, channels=2)
    assert im.data.shape == (1, 2, 8, 9) and im.channel_names == ["nfh"]
    np.testing.assert_array_equal(im.data[0], data[2])
    im = read_image(p, channels="map2")
    np.testing.assert_array_equal(im.data[0], data[1])
    im = read_image(p, channels=["nfh", 0])
    assert im.channel_names == ["nfh", "dapi"]
    np.testing.assert_array_equal(im.data, data[[2, 0]])
    with pytest.raises(InputError, match="c.ome.tif: no channel named 'actin'; available channels: \\['dapi', 'map2', 'nfh'\\]"):
        read_image(p, channels="actin")
    with pytest.raises(InputError, match="channel index 3 out of range; the image has 3 channel\\(s\\) \\(0..2\\)"):
        read_image(p, channels=3)
    with pytest.raises(InputError, match="out of range"):
        read_image(p, channels=-1)
    with pytest.raises(InputError, match="empty channel selection"):
        read_image(p, channels=[])
    with pytest.raises(InputError, match="not an index or a name"):
        read_image(p, channels=[True])

    p2 = write_ome_tiff(tmp_path / "nonames.ome.tif", data)
    assert read_image(p2).channel_names is None
    with pytest.raises(InputError, match="file has no channel names"):
        read_image(p2, channels="dapi")


# ----------------------------------------------------------------------------- bad files


def test_bad_files(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(InputError, match=f"{missing}: no such file"):
        read_image(missing)
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=f"{empty}: the file is empty"):
        read_image(empty)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(InputError, match=f"{junk}: cannot read as TIFF: .*not a TIFF file"):
        read_image(junk)


def test_truncated_files(tmp_path):
    good = write_ome_tiff(tmp_path / "good.ome.tif", _ramp((2, 3, 8, 9), np.uint8), channel_names=["a", "b"])
    raw = good.read_bytes()
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut = tmp_path / f"cut{int(frac * 100)}.tif"
        cut.write_bytes(raw[: int(len(raw) * frac)])
        with pytest.raises(InputError, match=str(cut)):
            read_image(cut)


def test_truncated_imagej_detected_by_plane_count(tmp_path):
    # cut right after the first plane: tifffile would silently return that one plane
    zcyx = _ramp((4, 2, 8, 9), np.uint8)
    good = tmp_path / "ij.tif"
    tifffile.imwrite(good, zcyx, imagej=True, metadata={"axes": "ZCYX"})
    with tifffile.TiffFile(good) as tif:
        end_of_first_plane = tif.pages[0].dataoffsets[0] + 8 * 9
    cut = tmp_path / "ij_cut.tif"
    cut.write_bytes(good.read_bytes()[: end_of_first_plane + 4])
    with pytest.raises(InputError, match="ij_cut.tif: the file is truncated or damaged: .*576 pixel values but only 72"):
        read_image(cut)


def test_czi_needs_pylibczirw(tmp_path, monkeypatch):
    p = tmp_path / "scan.czi"
    p.write_bytes(b"ZISRAWFILE" + b"\x00" * 100)
    monkeypatch.setitem(sys.modules, "pylibCZIrw", None)  # makes `import pylibCZIrw` fail
    with pytest.raises(InputError, match="scan.czi: reading CZI files needs .*pip install labelfree-jax\\[czi\\]"):
        read_image(p)


def test_corrupt_czi(tmp_path):
    pytest.importorskip("pylibCZIrw")
    p = tmp_path / "bad.czi"
    p.write_bytes(b"not a czi file" * 10)
    with pytest.raises(InputError, match=f"{p}: cannot read as CZI"):
        read_image(p)


def test_image_validation():
    with pytest.raises(InputError, match="axes must be"):
        Image(data=np.zeros((1, 2, 3)), axes="ZYX", channel_names=None, pixel_sizes=None, path=None)
    with pytest.raises(InputError, match="1 channels but 2 channel names"):
        Image(data=np.zeros((1, 2, 3)), axes="CYX", channel_names=["a", "b"], pixel_sizes=None, path=None)


# ----------------------------------------------------------------------------- real data


def _need(rel):
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"real data not available: {p} (see ../shared/data/README.md)")
    return p


@pytest.mark.realdata
def test_real_isl_phase_zyx():
    # tifffile reports this 'shaped' file as QYX (13, 1024, 1024): read as 13 z-planes, one channel
    im = read_image(_need("isl_condition_b/phase_zyx.tif"))
    assert im.axes == "CZYX" and im.data.shape == (1, 13, 1024, 1024) and im.data.dtype == np.uint16
    assert im.pixel_sizes is None and im.channel_names is None
    assert im.data.std() > 0
    with tifffile.TiffFile(im.path) as tif:
        np.testing.assert_array_equal(im.data[0, 5], tif.pages[5].asarray())


@pytest.mark.realdata
def test_real_isl_targets_cyx():
    # a planar 3-sample TIFF: tifffile reports SYX; samples are channels, so CYX without axes=
    p = _need("isl_condition_b/targets_dapi_map2_nfh_cyx.tif")
    im = read_image(p)
    assert im.axes == "CYX" and im.data.shape == (3, 1024, 1024) and im.data.dtype == np.uint16
    im2 = read_image(p, axes="CYX", channels=[2])
    assert im2.data.shape == (1, 1024, 1024)
    np.testing.assert_array_equal(im2.data[0], im.data[2])
    assert not np.array_equal(im.data[0], im.data[1])


@pytest.mark.realdata
def test_real_allen_ome_and_cohen_imagej():
    im = read_image(_need("allen_fnet2017_crop/brightfield.tif"))
    assert im.axes == "CZYX" and im.data.shape == (1, 32, 128, 128) and im.data.dtype == np.float32
    assert im.channel_names == ["C:0"]
    im = read_image(_need("cohen_frm/phase.tif"))
    assert im.axes == "CYX" and im.data.shape == (1, 512, 512) and im.data.dtype == np.uint16
