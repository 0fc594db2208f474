"""Files imagefiles refuses before allocating, in one line; compressed TIFFs it reads.

The bad files are valid OME-TIFFs written by tifffile whose OME-XML is then edited with
``tifffile.tiffcomment``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import describe_image, read_image


def _ramp(shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 4093).astype(dtype).reshape(shape)


def _edit_ome(path, old, new):
    xml = tifffile.tiffcomment(path)
    assert old in xml
    tifffile.tiffcomment(path, xml.replace(old, new))


@pytest.fixture
def no_pixel_reads(monkeypatch):
    """Fail the test if any pixel array is read (the refusal must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", refuse)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", refuse)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _ome(tmp_path, name="img.ome.tif", shape=(3, 8, 9), axes="ZYX", **kwargs):
    p = tmp_path / name
    tifffile.imwrite(p, _ramp(shape), ome=True, photometric="minisblack", metadata={"axes": axes}, **kwargs)
    return p


def test_more_planes_declared_than_stored(tmp_path, no_pixel_reads):
    p = _ome(tmp_path)
    _edit_ome(p, 'SizeZ="3"', 'SizeZ="5"')
    for call in (read_image, describe_image):
        with pytest.raises(InputError) as err:
            call(p)
        assert _one_line(err) == (
            f"{p}: the OME metadata declares 5 planes but the file stores only 3; refusing to read it "
            f"(the missing planes would be zeros)"
        )


def test_more_planes_declared_in_one_of_several_scenes(tmp_path):
    p = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(_ramp((2, 8, 9)), photometric="minisblack", metadata={"axes": "ZYX", "Name": "good"})
        tw.write(_ramp((2, 8, 9)), photometric="minisblack", metadata={"axes": "ZYX", "Name": "bad"})
    xml = tifffile.tiffcomment(p)
    head, tail = xml.split('Name="bad"')
    tifffile.tiffcomment(p, head + 'Name="bad"' + tail.replace('SizeZ="2"', 'SizeZ="4"', 1))
    assert read_image(p, scene="good").data.shape == (1, 2, 8, 9)
    with pytest.raises(InputError, match="scene 1 \\('bad'\\): the OME metadata declares 4 planes but the file "
                                         "stores only 2"):
        read_image(p, scene="bad")


def test_absurd_size_in_a_small_file(tmp_path, no_pixel_reads):
    p = _ome(tmp_path)
    _edit_ome(p, 'SizeZ="3"', 'SizeZ="100000"')
    assert p.stat().st_size < 8192
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = _one_line(err)
    assert msg.startswith(f"{p}: the metadata declares 13.7 MiB of pixels (shape (100000, 8, 9), uint16) but the "
                          f"file is only ")
    assert msg.endswith("(uncompressed); it is truncated or its metadata is wrong")


def test_absurd_size_in_a_compressed_file(tmp_path, no_pixel_reads):
    # deflate cannot compress better than ~1032:1: 100000 planes cannot be in a few KiB
    p = _ome(tmp_path, compression="zlib")
    _edit_ome(p, 'SizeZ="3"', 'SizeZ="100000"')
    with pytest.raises(InputError, match="declares 13.7 MiB of pixels .* \\(compressed at most 1500:1\\)"):
        read_image(p)
    # a plausible declaration in a compressed file is only refused for its missing planes
    p2 = _ome(tmp_path, name="z5.ome.tif", compression="zlib")
    _edit_ome(p2, 'SizeZ="3"', 'SizeZ="5"')
    with pytest.raises(InputError, match="declares 5 planes but the file stores only 3"):
        read_image(p2)


def test_size_limit(tmp_path, monkeypatch, no_pixel_reads):
    p = _ome(tmp_path, shape=(3, 8, 9))  # 432 bytes of pixels
    monkeypatch.setenv("LABELFREE_MAX_IMAGE_BYTES", "400")
    with pytest.raises(InputError) as err:
        read_image(p)
    assert _one_line(err) == (
        f"{p}: reading the image (shape (3, 8, 9), uint16) needs 432 B, over the limit of 400 B "
        f"(set LABELFREE_MAX_IMAGE_BYTES to raise it)"
    )
    assert describe_image(p).scenes[0].shape == (1, 3, 8, 9)  # describing reads no pixels: no limit


def test_size_limit_counts_one_time_point(tmp_path, monkeypatch):
    p = _ome(tmp_path, shape=(4, 8, 9), axes="TYX")  # 144 bytes per time point
    monkeypatch.setenv("LABELFREE_MAX_IMAGE_BYTES", "200")
    assert read_image(p, time=3).data.shape == (1, 8, 9)
    monkeypatch.setattr("labelfree_jax.imagefiles.info.MAX_IMAGE_BYTES", 100)
    monkeypatch.delenv("LABELFREE_MAX_IMAGE_BYTES")
    with pytest.raises(InputError, match="reading the image, time point 3 .* needs 144 B, over the limit of 100 B"):
        read_image(p, time=3)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1), (8, 1), (1, 9), (3, 1, 9)])
def test_too_small_to_predict_on(tmp_path, shape, no_pixel_reads):
    p = tmp_path / "tiny.tif"
    tifffile.imwrite(p, np.zeros(shape, np.uint16), photometric="minisblack")
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = _one_line(err)
    assert msg.startswith(f"{p}: the image is too small to predict on or train with: shape ")
    assert msg.endswith("Y and X need at least 2 pixels each")


def test_too_small_with_user_axes(tmp_path):
    p = tmp_path / "tiny.tif"
    tifffile.imwrite(p, np.zeros((4, 1, 3), np.uint16), photometric="minisblack", metadata=None)
    with pytest.raises(InputError) as err:
        read_image(p, axes="YXC")
    assert _one_line(err) == (f"{p}: the image is too small to predict on or train with: shape (3, 4, 1) "
                              f"(axes CYX); Y and X need at least 2 pixels each")


def test_two_pixels_is_enough(tmp_path):
    p = tmp_path / "small.tif"
    tifffile.imwrite(p, _ramp((2, 2)))
    assert read_image(p).data.shape == (1, 2, 2)


# ----------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compression", ["lzw", "zlib", "deflate", "zstd", "packbits", "lzma"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_compressed_tiffs(tmp_path, compression, dtype):
    data = _ramp((2, 3, 16, 17), dtype)
    p = tmp_path / f"{compression}.ome.tif"
    tifffile.imwrite(p, data, ome=True, photometric="minisblack", compression=compression,
                     metadata={"axes": "CZYX", "Channel": {"Name": ["a", "b"]}})
    with tifffile.TiffFile(p) as tif:
        assert tif.pages.first.compression != 1
    im = read_image(p)
    assert im.data.dtype == np.dtype(dtype) and im.channel_names == ["a", "b"]
    np.testing.assert_array_equal(im.data, data)


def test_compressed_with_predictor(tmp_path):
    data = _ramp((5, 32, 33))
    p = tmp_path / "pred.tif"
    tifffile.imwrite(p, data, photometric="minisblack", compression="zlib", predictor=True, metadata=None)
    np.testing.assert_array_equal(read_image(p).data[0], data)


def test_compressed_imagej_time_point(tmp_path):
    tzcyx = _ramp((3, 2, 2, 8, 9))
    p = tmp_path / "ij_lzw.tif"
    tifffile.imwrite(p, tzcyx, imagej=True, compression="lzw", metadata={"axes": "TZCYX"})
    np.testing.assert_array_equal(read_image(p, time=1).data, tzcyx[1].transpose(1, 0, 2, 3))


def test_big_endian_tiff_reads_native(tmp_path):
    data = _ramp((3, 8, 9)).astype(">u2")
    p = tmp_path / "be.tif"
    tifffile.imwrite(p, data, byteorder=">", photometric="minisblack", metadata={"axes": "ZYX"})
    im = read_image(p)
    assert im.data.dtype == np.dtype("uint16") and im.data.dtype.isnative
    np.testing.assert_array_equal(im.data[0], data)
    assert describe_image(p).scenes[0].dtype == np.dtype("uint16")
