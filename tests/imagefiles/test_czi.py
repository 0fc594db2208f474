"""CZI files read with pylibCZIrw: scenes, time points, channels, pixel sizes; files written by pylibCZIrw."""

from __future__ import annotations

import numpy as np
import pytest

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import describe_image, read_image
from labelfree_jax.imagefiles.czi import _metadata

pyczi = pytest.importorskip("pylibCZIrw.czi")


def _plane(s, t, c, z, shape=(8, 9)):
    return (np.arange(shape[0] * shape[1]).reshape(shape) + 1000 * s + 300 * t + 100 * c + 10 * z).astype(np.uint16)


def _write(path, *, scenes=1, times=1, channels=1, zs=1, names=None, scale=None):
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for s in range(scenes):
            for t in range(times):
                for c in range(channels):
                    for z in range(zs):
                        w.write(_plane(s, t, c, z), plane={"C": c, "Z": z, "T": t}, scene=s, location=(s * 100, 0))
        # pylibCZIrw writes the scale as given into Scaling/Distance/Value, which CZI defines in metres
        sx, sz = scale or (0.0, 0.0)
        w.write_metadata(document_name="test", channel_names=dict(enumerate(names or [])),
                         scale_x=sx, scale_y=sx, scale_z=sz)
    return path


def _expected(s, t, channels, zs):
    return np.stack([np.stack([_plane(s, t, c, z) for z in range(zs)]) for c in range(channels)])


def test_scenes_channels_pixel_sizes(tmp_path):
    p = _write(tmp_path / "two.czi", scenes=2, channels=2, zs=3, names=["Bright", "DNA"], scale=(0.108e-6, 0.29e-6))
    info = describe_image(p)
    assert info.format == "CZI" and info.n_scenes == 2
    for i, s in enumerate(info.scenes):
        assert (s.index, s.name, s.axes, s.shape, s.dtype, s.n_time) == (i, f"scene{i}", "CZYX", (2, 3, 8, 9),
                                                                         np.dtype(np.uint16), 1)
        assert s.channel_names == ("Bright", "DNA")
        assert s.pixel_sizes == pytest.approx({"z": 0.29, "y": 0.108, "x": 0.108})
        assert s.warnings == ()
    with pytest.raises(InputError) as err:
        read_image(p)
    msg = str(err.value)
    assert msg == (f"{p}: the file has 2 scenes (0 'scene0', 1 'scene1'); choose one with scene=<index or name> "
                   f"(CLI: --scene NAME_OR_INDEX)")
    for s in range(2):
        im = read_image(p, scene=s)
        assert im.axes == "CZYX" and im.scene == f"scene{s}" and im.channel_names == ["Bright", "DNA"]
        np.testing.assert_array_equal(im.data, _expected(s, 0, 2, 3))
    im = read_image(p, scene="scene1", channels="DNA")
    np.testing.assert_array_equal(im.data[0], _expected(1, 0, 2, 3)[1])
    with pytest.raises(InputError, match="no channel named 'GFP'; available channels: \\['Bright', 'DNA'\\]"):
        read_image(p, scene=0, channels="GFP")


def test_time_points(tmp_path):
    p = _write(tmp_path / "t.czi", times=3)
    (s,) = describe_image(p).scenes
    assert s.n_time == 3 and s.axes == "CYX" and s.shape == (1, 8, 9)
    assert s.warnings == ("pixel sizes unknown: the file has none",)  # scale 0 means unknown
    with pytest.raises(InputError, match="t.czi: time series with 3 time points .*time=<index> \\(CLI: --time I\\)"):
        read_image(p)
    im = read_image(p, time=2)
    assert im.scene is None and im.pixel_sizes is None
    np.testing.assert_array_equal(im.data[0], _plane(0, 2, 0, 0))


def test_colour_czi_is_rgb(tmp_path):
    p = tmp_path / "rgb.czi"
    bgr = np.zeros((8, 9, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 1, 2, 3  # stored order is B, G, R
    with pyczi.create_czi(str(p), exist_ok=True) as w:
        w.write(bgr)
    im = read_image(p)
    assert im.axes == "CYX" and im.data.shape == (3, 8, 9)
    assert im.data[:, 0, 0].tolist() == [3, 2, 1]


def test_mosaic_tiles_are_stitched(tmp_path):
    p = tmp_path / "mosaic.czi"
    with pyczi.create_czi(str(p), exist_ok=True) as w:
        w.write(np.full((8, 9), 1, np.uint16), location=(0, 0))
        w.write(np.full((8, 9), 2, np.uint16), location=(9, 0))
    im = read_image(p)
    assert im.data.shape == (1, 8, 18)
    assert (im.data[0, :, :9] == 1).all() and (im.data[0, :, 9:] == 2).all()


def test_czi_refusals(tmp_path, monkeypatch):
    p = _write(tmp_path / "a.czi", zs=2)
    with pytest.raises(InputError, match="axes='ZYX' is for TIFF files without axis metadata"):
        read_image(p, axes="ZYX")
    monkeypatch.setenv("LABELFREE_MAX_IMAGE_BYTES", "100")
    with pytest.raises(InputError, match="a.czi: reading the image .* needs 288 B, over the limit of 100 B"):
        read_image(p)
    tiny = tmp_path / "tiny.czi"
    with pyczi.create_czi(str(tiny), exist_ok=True) as w:
        w.write(np.zeros((1, 5), np.uint16))
    with pytest.raises(InputError, match="tiny.czi: scene 'scene0' is too small .* shape \\(1, 1, 5\\)"):
        describe_image(tiny)


def test_scene_names_and_scaling_from_metadata():
    meta = {"ImageDocument": {"Metadata": {
        "Scaling": {"Items": {"Distance": [{"@Id": "X", "Value": "2.5e-07"}, {"@Id": "Y", "Value": "2.5e-07"},
                                           {"@Id": "Z", "Value": "0"}]}},
        "Information": {"Image": {"Dimensions": {
            "Channels": {"Channel": [{"@Id": "Channel:0", "@Name": "TL Brightfield"}, {"@Id": "Channel:1"}]},
            "S": {"Scenes": {"Scene": [{"@Index": "0", "@Name": "A1"}, {"@Index": "1", "@Name": "B2"}]}},
        }}},
    }}}
    notes: list[str] = []
    names, ps, scenes = _metadata(meta, notes)
    assert names is None  # one channel has no name
    assert ps == pytest.approx({"x": 0.25, "y": 0.25}) and "z" not in ps
    assert scenes == {0: "A1", 1: "B2"} and notes == []
