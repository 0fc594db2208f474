"""Scenes, time points, channel names, describe_image and the warnings of imagefiles (issue 13 contract).

Every file is written by tifffile itself.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image, ImageInfo, SceneInfo, describe_image, read_image, write_ome_tiff


def _ramp(shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 4093).astype(dtype).reshape(shape)


@pytest.fixture
def two_scenes(tmp_path):
    """An OME-TIFF with two images: 'pos A' (T=2, C=2, Z=3) and an unnamed-by-us 2D one."""
    a = _ramp((2, 2, 3, 8, 9))
    b = _ramp((3, 10, 11), np.float32) + 0.5
    p = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(a, photometric="minisblack", metadata={
            "axes": "TCZYX", "Name": "pos A", "Channel": {"Name": ["Bright", "DNA"]},
            "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108, "PhysicalSizeZ": 0.29})
        tw.write(b, photometric="minisblack", metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return p, a, b


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- scenes


def test_several_scenes_need_a_choice(two_scenes):
    p, _, _ = two_scenes
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = _one_line(err)
    assert msg.startswith(f"{p}: the file has 2 scenes")
    assert "0 'pos A'" in msg and "1 'Image1'" in msg and "scene=" in msg and "--scene" in msg


def test_scene_by_index_name_or_digits(two_scenes):
    p, a, b = two_scenes
    im = read_image(p, scene=1)
    assert isinstance(im, Image) and im.scene == "Image1" and im.axes == "CYX"
    np.testing.assert_array_equal(im.data, b)
    assert im.pixel_sizes == pytest.approx({"y": 0.5, "x": 0.5})
    np.testing.assert_array_equal(read_image(p, scene="Image1").data, b)
    np.testing.assert_array_equal(read_image(p, scene="1").data, b)
    im = read_image(p, scene="pos A", time=1)
    assert im.scene == "pos A" and im.axes == "CZYX" and im.channel_names == ["Bright", "DNA"]
    np.testing.assert_array_equal(im.data, a[1])
    assert im.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
    assert im.warnings == ()
    with pytest.raises(InputError, match="no scene named 'pos B'; scenes: 0 'pos A', 1 'Image1'"):
        read_image(p, scene="pos B")
    with pytest.raises(InputError, match="scene index 2 out of range; the file has 2 scene"):
        read_image(p, scene=2)
    with pytest.raises(InputError, match="scene=1.5 is not an index or a name"):
        read_image(p, scene=1.5)


def test_single_scene_file_has_no_scene_name(tmp_path):
    p = write_ome_tiff(tmp_path / "one.ome.tif", _ramp((1, 8, 9)), pixel_sizes={"y": 1, "x": 1})
    im = read_image(p)
    assert im.scene is None
    assert read_image(p, scene=0).scene is None
    with pytest.raises(InputError, match="scene index 1 out of range"):
        read_image(p, scene=1)


def test_plain_tiff_series_are_scenes(tmp_path):
    p = tmp_path / "series.tif"
    tifffile.imwrite(p, _ramp((8, 9)))
    tifffile.imwrite(p, _ramp((4, 5), np.uint8), append=True)
    with pytest.raises(InputError, match="2 scenes \\(0 'scene0', 1 'scene1'\\)"):
        read_image(p)
    im = read_image(p, scene="scene1")
    assert im.data.shape == (1, 4, 5) and im.data.dtype == np.uint8 and im.scene == "scene1"


# ----------------------------------------------------------------------------- time points


def test_time_points_need_a_choice(two_scenes):
    p, a, _ = two_scenes
    with pytest.raises(InputError) as err:
        read_image(p, scene=0)
    msg = _one_line(err)
    assert "time series with 2 time points" in msg and "time=" in msg and "--time" in msg and "0..1" in msg
    for t in range(2):
        np.testing.assert_array_equal(read_image(p, scene=0, time=t).data, a[t])
    with pytest.raises(InputError, match="time index 2 out of range; the file has 2 time point"):
        read_image(p, scene=0, time=2)
    with pytest.raises(InputError, match="time='0' is not an index"):
        read_image(p, scene=0, time="0")
    # a scene without time points: time 0 is fine, 1 is out of range
    assert read_image(p, scene=1, time=0).data.shape == (3, 10, 11)
    with pytest.raises(InputError, match="time index 1 out of range; the file has 1 time point"):
        read_image(p, scene=1, time=1)


def test_imagej_time_point(tmp_path):
    tzcyx = _ramp((3, 4, 2, 8, 9))
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    for t in (0, 2):
        im = read_image(p, time=t)
        assert im.axes == "CZYX" and im.data.shape == (2, 4, 8, 9)
        np.testing.assert_array_equal(im.data, tzcyx[t].transpose(1, 0, 2, 3))


def test_time_point_reads_only_its_pages(two_scenes, monkeypatch):
    p, a, _ = two_scenes

    def no_full_read(*args, **kwargs):
        raise AssertionError("read the whole series")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_full_read)
    np.testing.assert_array_equal(read_image(p, scene="pos A", time=1).data, a[1])


def test_user_time_axis(tmp_path):
    tyx = _ramp((3, 8, 9))
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, tyx, photometric="minisblack", metadata=None)
    with pytest.raises(InputError, match="time series with 3 time points"):
        read_image(p, axes="TYX")
    np.testing.assert_array_equal(read_image(p, axes="TYX", time=2).data[0], tyx[2])


# ----------------------------------------------------------------------------- channels


def test_channel_by_name_in_a_scene(two_scenes):
    p, a, _ = two_scenes
    im = read_image(p, scene="pos A", time=0, channels="DNA")
    assert im.channel_names == ["DNA"] and im.scene == "pos A"
    np.testing.assert_array_equal(im.data[0], a[0, 1])
    with pytest.raises(InputError) as err:
        read_image(p, scene="pos A", time=0, channels="Actin")
    assert "no channel named 'Actin'; available channels: ['Bright', 'DNA']" in _one_line(err)


# ----------------------------------------------------------------------------- describe_image


def test_describe_image(two_scenes, monkeypatch):
    p, _, _ = two_scenes

    def no_pixels(*args, **kwargs):
        raise AssertionError("describe_image read pixels")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_pixels)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_pixels)
    info = describe_image(p)
    assert isinstance(info, ImageInfo) and info.path == p and info.format == "OME-TIFF" and info.n_scenes == 2
    s0, s1 = info.scenes
    assert isinstance(s0, SceneInfo)
    assert (s0.index, s0.name, s0.axes, s0.shape, s0.dtype, s0.n_time) == (0, "pos A", "CZYX", (2, 3, 8, 9),
                                                                           np.dtype(np.uint16), 2)
    assert s0.channel_names == ("Bright", "DNA")
    assert s0.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
    assert s0.warnings == ()
    assert (s1.index, s1.name, s1.axes, s1.shape, s1.dtype, s1.n_time) == (1, "Image1", "CYX", (3, 10, 11),
                                                                           np.dtype(np.float32), 1)
    assert s1.channel_names is None and s1.pixel_sizes == pytest.approx({"y": 0.5, "x": 0.5})
    assert info.scene("Image1") is s1 and info.scene(0) is s0


def test_describe_plain_tiff_with_axes(tmp_path):
    p = tmp_path / "chlast.tif"
    tifffile.imwrite(p, _ramp((16, 12, 2)), metadata=None)
    (s,) = describe_image(p).scenes
    assert s.axes == "CZYX" and s.shape == (1, 16, 12, 2) and s.name == "scene0"
    assert any("channels last? pass axes='YXC'" in w for w in s.warnings)
    (s,) = describe_image(p, axes="YXC").scenes
    assert s.axes == "CYX" and s.shape == (2, 16, 12)
    assert describe_image(p).format == "TIFF"


def test_describe_does_not_log_warnings(tmp_path, caplog):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, _ramp((5, 8, 9)), metadata=None)
    with caplog.at_level(logging.WARNING):
        (s,) = describe_image(p).scenes
    assert s.warnings and not caplog.records


# ----------------------------------------------------------------------------- warnings


def test_axes_guessed_warning(tmp_path, caplog):
    p = tmp_path / "plain3d.tif"
    tifffile.imwrite(p, _ramp((5, 8, 9)), metadata=None)
    with caplog.at_level(logging.WARNING, logger="labelfree_jax.imagefiles"):
        im = read_image(p)
    assert im.axes == "CZYX"
    assert im.warnings == (
        "no axes metadata: read the 3 axes of shape (5, 8, 9) as ZYX; pass axes=... if wrong",
        "pixel sizes unknown: the file has none",
    )
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == [f"{p}: {w}" for w in im.warnings]
    # telling the axes removes the guess (pixel sizes are still unknown)
    assert read_image(p, axes="ZYX").warnings == ("pixel sizes unknown: the file has none",)


def test_channels_last_plain_tiff(tmp_path, caplog):
    yxc = _ramp((128, 128, 2))
    p = tmp_path / "yxc.tif"
    tifffile.imwrite(p, yxc, metadata=None)
    with caplog.at_level(logging.WARNING):
        im = read_image(p)
    assert im.data.shape == (1, 128, 128, 2)  # read as asked by nobody: ZYX, with warnings
    assert "no axes metadata: read the 3 axes of shape (128, 128, 2) as ZYX; pass axes=... if wrong" in im.warnings
    assert "last axis has 2 samples and no metadata: channels last? pass axes='YXC'" in im.warnings
    assert any(str(p) in r.getMessage() and "channels last?" in r.getMessage() for r in caplog.records)
    im = read_image(p, axes="YXC")
    assert im.axes == "CYX" and im.data.shape == (2, 128, 128)
    np.testing.assert_array_equal(im.data, yxc.transpose(2, 0, 1))
    assert im.warnings == ("pixel sizes unknown: the file has none",)


def test_shaped_tiff_also_warns(tmp_path):
    # tifffile's default 'shaped' description records the shape but not the axes
    p = tmp_path / "shaped.tif"
    tifffile.imwrite(p, _ramp((64, 64, 3)), photometric="minisblack")
    im = read_image(p)
    assert any("no axes metadata" in w for w in im.warnings)
    assert "last axis has 3 samples and no metadata: channels last? pass axes='YXC'" in im.warnings


def test_pixel_size_warnings(tmp_path):
    data = _ramp((1, 3, 8, 9))
    full = write_ome_tiff(tmp_path / "full.ome.tif", data, pixel_sizes={"z": 1, "y": 0.5, "x": 0.5})
    assert read_image(full).warnings == ()
    part = write_ome_tiff(tmp_path / "part.ome.tif", data, pixel_sizes={"y": 0.5, "x": 0.5})
    im = read_image(part)
    assert im.pixel_sizes == {"y": 0.5, "x": 0.5} and im.warnings == ("pixel size unknown along z",)
    none = write_ome_tiff(tmp_path / "none.ome.tif", data)
    assert read_image(none).warnings == ("pixel sizes unknown: the file has none",)


def test_ignored_metadata_is_a_warning(tmp_path):
    p = tmp_path / "units.ome.tif"
    tifffile.imwrite(p, _ramp((8, 9)), ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "furlong", "PhysicalSizeY": 1.0})
    im = read_image(p)
    assert im.pixel_sizes == {"y": 1.0}
    assert im.warnings == ("ignoring PhysicalSizeX with unknown unit 'furlong'", "pixel size unknown along x")


def test_warnings_survive_channel_selection(tmp_path):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, _ramp((3, 8, 9)), photometric="minisblack", metadata=None)
    im = read_image(p, axes="CYX", channels=[1])
    assert im.warnings == ("pixel sizes unknown: the file has none",) and im.data.shape == (1, 8, 9)
