"""The one CSV manifest reader (labelfree_jax.imagefiles.manifest)."""

import pytest

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.manifest import read_manifest


def _write(path, text):
    path.write_text(text)
    return path


def test_paths_are_relative_to_the_csv_and_scene_time_channels_are_parsed(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("a.tif", "b.tif"):
        (tmp_path / "sub" / name).write_bytes(b"")
    csv = _write(tmp_path / "sub" / "m.csv",
                 "path_signal,path_target,channel_signal,scene,time\n"
                 "a.tif,b.tif,Bright;2,pos A,3\n"
                 "a.tif,b.tif,0,1,\n")
    monkeypatch.chdir(tmp_path)  # never resolved against the working directory
    rows = read_manifest(csv)
    assert rows[0].signal == tmp_path / "sub" / "a.tif" and rows[0].target == tmp_path / "sub" / "b.tif"
    assert rows[0].signal_channels == ("Bright", 2) and rows[0].scene == "pos A" and rows[0].time == 3
    assert rows[1].signal_channels == (0,) and rows[1].scene == 1 and rows[1].time is None


def test_bad_time_cell_and_missing_files_are_one_line(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"")
    bad = _write(tmp_path / "t.csv", "path,time\na.tif,last\n")
    with pytest.raises(InputError, match=r"t.csv, line 2: time must be a time-point index"):
        read_manifest(bad)
    missing = _write(tmp_path / "m.csv", "path_signal,path_target\nnope.tif,a.tif\n")
    with pytest.raises(InputError, match="1 file\\(s\\) listed in the manifest do not exist"):
        read_manifest(missing)
    # prediction reads the same file without a target column and without checking files
    rows = read_manifest(_write(tmp_path / "p.csv", "path_signal\nnope.tif\n"), require_target=False,
                         check_files=False)
    assert rows[0].target is None and rows[0].signal == tmp_path / "nope.tif"
