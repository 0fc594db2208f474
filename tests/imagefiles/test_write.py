"""write_ome_tiff: provenance in the OME metadata, channel names as given, big-endian arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import read_image, read_provenance, write_ome_tiff
from labelfree_jax.imagefiles.ome import parse_ome
from labelfree_jax.imagefiles.provenance import PROVENANCE_NAMESPACE

PROVENANCE = {
    "model": "dna",
    "source": "hf://allencell/labelfree-dna",
    "revision": "0123456789abcdef0123456789abcdef01234567",
    "working_pixel_size_um": 0.29,
    "intensity_unit": "z-score",
    "input": "/data/cell[1].ome.tif",
    "scene": None,
    "time": 3,
    "note": 'commas, <angle> & "quotes" µm',
}


def test_provenance_round_trip(tmp_path):
    data = np.linspace(-1, 1, 2 * 3 * 8 * 9, dtype=np.float32).reshape(2, 3, 8, 9)
    p = write_ome_tiff(tmp_path / "pred.ome.tif", data, channel_names=["DNA (predicted)", "Membrane, predicted"],
                       pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108}, provenance=PROVENANCE)
    prov = read_provenance(p)
    assert prov == PROVENANCE
    assert type(prov["time"]) is int and type(prov["working_pixel_size_um"]) is float and prov["scene"] is None
    im = read_image(p)
    assert im.channel_names == ["DNA (predicted)", "Membrane, predicted"]
    np.testing.assert_array_equal(im.data, data)
    assert im.warnings == ()
    assert sorted(os.listdir(tmp_path)) == ["pred.ome.tif"]


def test_provenance_is_in_the_ome_metadata(tmp_path):
    # as tifffile (and any OME reader) sees it: the Description JSON and a namespaced MapAnnotation
    p = write_ome_tiff(tmp_path / "p.ome.tif", np.zeros((1, 4, 5), np.float32), provenance={"model": "dna", "n": 2})
    with tifffile.TiffFile(p) as tif:
        assert tif.is_ome
        (image,) = parse_ome(tif.ome_metadata)
    assert image.description == '{"model": "dna", "n": 2}'
    assert image.map_annotations == {PROVENANCE_NAMESPACE: {"model": "dna", "n": "2"}}


def test_no_provenance(tmp_path):
    p = write_ome_tiff(tmp_path / "plain.ome.tif", np.zeros((1, 4, 5), np.uint8))
    assert read_provenance(p) == {}
    assert read_provenance(write_ome_tiff(tmp_path / "empty.ome.tif", np.zeros((1, 4, 5)), provenance={})) == {}
    q = tmp_path / "plain.tif"
    tifffile.imwrite(q, np.zeros((4, 5), np.uint8))
    assert read_provenance(q) == {}
    # a foreign OME-TIFF with a JSON description is not taken for provenance
    r = tmp_path / "foreign.ome.tif"
    tifffile.imwrite(r, np.zeros((4, 5), np.uint8), ome=True, metadata={"axes": "YX", "Description": '{"a": 1}'})
    assert read_provenance(r) == {}


def test_provenance_from_the_annotation_when_the_description_changed(tmp_path):
    p = write_ome_tiff(tmp_path / "p.ome.tif", np.zeros((1, 4, 5), np.float32), provenance={"model": "dna", "n": 2})
    xml = tifffile.tiffcomment(p)
    tifffile.tiffcomment(p, xml.replace("{&quot;model&quot;: &quot;dna&quot;, &quot;n&quot;: 2}", "edited in Fiji"))
    assert read_provenance(p) == {"model": "dna", "n": "2"}


def test_read_provenance_errors(tmp_path):
    with pytest.raises(InputError, match="missing.tif: no such file"):
        read_provenance(tmp_path / "missing.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="junk.tif: cannot read as TIFF"):
        read_provenance(junk)


@pytest.mark.parametrize("provenance,match", [
    ({"model": [1, 2]}, "provenance model=\\[1, 2\\] is not a str, float, int or None"),
    ({"x": float("nan")}, "provenance x=nan is not a finite number"),
    ({"": "a"}, "provenance key '' is not a non-empty string"),
    ({1: "a"}, "provenance key 1 is not a non-empty string"),
    (["model", "dna"], "provenance must be a mapping"),
])
def test_bad_provenance(tmp_path, provenance, match):
    dest = tmp_path / "out.ome.tif"
    with pytest.raises(InputError, match=match):
        write_ome_tiff(dest, np.zeros((1, 4, 5), np.float32), provenance=provenance)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">i4", ">f8", "<u2"])
def test_big_endian_arrays_are_written(tmp_path, dtype):
    data = (np.arange(2 * 8 * 9) - 50).reshape(2, 8, 9)
    data = np.abs(data) if dtype.endswith("u2") else data
    arr = data.astype(dtype)
    p = write_ome_tiff(tmp_path / "be.ome.tif", arr, channel_names=["a", "b"])
    im = read_image(p)
    assert im.data.dtype == np.dtype(dtype).newbyteorder("=") and im.data.dtype.isnative
    np.testing.assert_array_equal(im.data, data)


def test_big_endian_unsupported_dtype_is_still_refused(tmp_path):
    with pytest.raises(InputError, match="cannot write dtype int64"):
        write_ome_tiff(tmp_path / "a.ome.tif", np.zeros((1, 4, 5), ">i8"))
